pub mod info;
pub mod tools;
