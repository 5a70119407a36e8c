//! `bitnet-cli chat`: a conversation on the terminal. Each line you type is
//! a user message; the reply streams back. With stdin not a terminal, every
//! input line is one user turn (handy for scripts).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use bitnet::backend::Backend;
use bitnet::chat::{ChatMessage, ChatTemplate};
use bitnet::Engine;

use super::run::{load_engine, print_stats, set_threads, AnyEngine, SamplingArgs};
use crate::with_any;

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model (default: the bundled model).
    #[arg(short = 'm', long = "model", env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// System message.
    #[arg(long = "system-prompt", visible_alias = "sys")]
    system: Option<String>,
    /// `bitnet` (built-in BitNet format), `jinja` (the file's
    /// tokenizer.chat_template) or a Jinja template text. Default: bitnet for
    /// BitNet architectures, else the file's template.
    #[arg(long)]
    chat_template: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    set_threads(a.sampling.threads)?;
    let (engine, source) = load_engine(a.model, &a.sampling)?;
    let file_template = source
        .open()?
        .metadata()
        .get_str("tokenizer.chat_template")
        .map(str::to_owned);
    with_any!(AnyEngine, engine, e => converse(&e, file_template, a.chat_template, a.system, &a.sampling))
}

fn converse<B: Backend>(
    engine: &Engine<B>,
    file_template: Option<String>,
    chat_template: Option<String>,
    system: Option<String>,
    sampling: &SamplingArgs,
) -> anyhow::Result<()> {
    let arch = engine.model.cfg.architecture.clone();
    let template = match chat_template.as_deref() {
        Some("bitnet") => ChatTemplate::BitNet,
        Some("jinja") => ChatTemplate::Jinja(
            file_template
                .ok_or_else(|| anyhow::anyhow!("the model has no tokenizer.chat_template"))?,
        ),
        Some(text) => ChatTemplate::Jinja(text.to_owned()),
        None => ChatTemplate::for_model(&arch, file_template.as_deref()),
    };
    let tok = &engine.tokenizer;
    let cfg = sampling.config();

    // One session for the whole conversation: each turn reuses the cached
    // keys and values of everything before it.
    let mut session = engine.new_session();
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(ChatMessage::new("system", &s));
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chat: type a message, Enter to send; Ctrl-D to quit.");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        messages.push(ChatMessage::new("user", &line));
        let ids = template.encode(tok, &messages)?;
        let mut reply = String::new();
        let mut out = std::io::stdout().lock();
        let stats = engine.generate_ids(&mut session, &ids, &cfg, |text| {
            reply.push_str(text);
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })?;
        let _ = writeln!(out);
        drop(out);
        if interactive {
            print_stats(&stats, &cfg);
        }
        messages.push(ChatMessage::new("assistant", &reply));
    }
    Ok(())
}
