pub mod bench;
pub mod chat;
pub mod device;
pub mod info;
pub mod run;
pub mod tools;
