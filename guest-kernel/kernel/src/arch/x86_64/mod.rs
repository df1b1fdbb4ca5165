//! x86-64 support: boot entry, descriptor tables, traps, paging and the platform layer.
//! Everything that differs between kvm_pvm and native x86 lives in `platform`.

pub mod apic;
pub mod cpu;
pub mod fpu;
pub mod ioapic;
pub mod paging;
pub mod percpu;
pub mod platform;
pub mod tables;
pub mod trap;
pub mod user;

core::arch::global_asm!(include_str!("boot.S"), options(att_syntax));
core::arch::global_asm!(include_str!("entry.S"), options(att_syntax));
