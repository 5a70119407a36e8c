//! Chat prompts: the built-in BitNet format, or the model's own
//! `tokenizer.chat_template` rendered with minijinja in a sandbox (no access
//! to host objects, a fuel limit, an output cap): chat templates are code.
//!
//! BitNet b1.58 2B4T's format (microsoft/BitNet gpu/tokenizer.py ChatFormat):
//! `<|begin_of_text|>` then, per message, `System: ` / `User: ` /
//! `Assistant: ` + content + `<|eot_id|>`, ending with `Assistant: `.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Fuel for one render: plenty for real templates, a fast stop for hostile ones.
pub const TEMPLATE_FUEL: u64 = 200_000;
/// Longest rendered prompt accepted from a template.
pub const MAX_RENDERED: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChatError {
    #[error("chat template: {0}")]
    Template(String),
    #[error("chat template output is over {MAX_RENDERED} bytes")]
    TooLong,
    #[error("role {0:?} is not one of system, user, assistant")]
    BadRole(String),
}

/// Which format to build prompts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    /// The built-in BitNet b1.58 format.
    BitNet,
    /// A Jinja template (usually the file's `tokenizer.chat_template`).
    Jinja(String),
}

impl ChatTemplate {
    /// The format a model chats in unless told otherwise: the built-in one
    /// for BitNet architectures (2B4T's file template is not the format it
    /// was trained on), else the file's `tokenizer.chat_template`.
    pub fn for_model(architecture: &str, file_template: Option<&str>) -> ChatTemplate {
        match file_template {
            Some(t) if !architecture.starts_with("bitnet") => ChatTemplate::Jinja(t.into()),
            _ => ChatTemplate::BitNet,
        }
    }

    /// The conversation as prompt token ids, ready for the assistant's
    /// reply (BOS where the format writes it, as the tokenizer's text).
    pub fn encode(
        &self,
        tok: &crate::tokenizer::Tokenizer,
        messages: &[ChatMessage],
    ) -> Result<Vec<u32>, ChatError> {
        let text = |id: Option<u32>| id.and_then(|i| tok.token(i)).unwrap_or("").to_owned();
        let prompt = self.render(messages, &text(tok.bos), &text(tok.eos))?;
        Ok(tok.encode(&prompt, false))
    }

    /// Renders the conversation and the start of the assistant's reply.
    /// `bos` is the BOS token text, included where the format wants it (the
    /// tokenizer then maps it to the BOS id).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        bos: &str,
        eos: &str,
    ) -> Result<String, ChatError> {
        match self {
            ChatTemplate::BitNet => {
                let mut s = String::from(bos);
                for m in messages {
                    let header = match m.role.as_str() {
                        "system" => "System: ",
                        "user" => "User: ",
                        "assistant" => "Assistant: ",
                        other => return Err(ChatError::BadRole(other.into())),
                    };
                    s.push_str(header);
                    s.push_str(m.content.trim());
                    s.push_str("<|eot_id|>");
                }
                s.push_str("Assistant: ");
                Ok(s)
            }
            ChatTemplate::Jinja(source) => render_jinja(source, messages, bos, eos),
        }
    }
}

fn render_jinja(
    source: &str,
    messages: &[ChatMessage],
    bos: &str,
    eos: &str,
) -> Result<String, ChatError> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(64);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        },
    );
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| ChatError::Template(e.to_string()))?;
    let msgs: Vec<_> = messages
        .iter()
        .map(|m| context! { role => m.role.clone(), content => m.content.clone() })
        .collect();
    let out = tmpl
        .render(context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| ChatError::Template(e.to_string()))?;
    if out.len() > MAX_RENDERED {
        return Err(ChatError::TooLong);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convo() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "You are helpful."),
            ChatMessage::new("user", " Hi! "),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "2+2?"),
        ]
    }

    #[test]
    fn bitnet_format() {
        let s = ChatTemplate::BitNet
            .render(&convo(), "<|begin_of_text|>", "")
            .unwrap();
        assert_eq!(
            s,
            "<|begin_of_text|>System: You are helpful.<|eot_id|>User: Hi!<|eot_id|>\
             Assistant: Hello.<|eot_id|>User: 2+2?<|eot_id|>Assistant: "
        );
    }

    #[test]
    fn jinja_template_renders() {
        let t = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</s>{% endfor %}\
                 {% if add_generation_prompt %}<assistant>{% endif %}";
        let s = ChatTemplate::Jinja(t.into())
            .render(&convo()[1..2], "<s>", "</s>")
            .unwrap();
        assert_eq!(s, "<s><user>Hi!</s><assistant>");
    }

    #[test]
    fn hostile_templates_fail_fast() {
        let start = std::time::Instant::now();
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let e = ChatTemplate::Jinja(t.into())
            .render(&convo(), "", "")
            .unwrap_err();
        assert!(matches!(e, ChatError::Template(_)), "{e}");
        let t = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(ChatTemplate::Jinja(t.into())
            .render(&convo(), "", "")
            .is_err());
        let t = "{{ raise_exception('no system role') }}";
        assert!(ChatTemplate::Jinja(t.into())
            .render(&convo(), "", "")
            .unwrap_err()
            .to_string()
            .contains("no system role"));
        assert!(start.elapsed().as_millis() < 2000);
    }
}
