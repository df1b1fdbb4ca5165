//! Architecture support. Only x86-64 exists; nothing outside `arch` uses instructions directly.
mod x86_64;
pub use x86_64::*;
