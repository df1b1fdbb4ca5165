//! The descriptor tables: GDT (Linux selector layout), TSS with IST stacks, IDT.
//!
//! Both backends use the same layout. kvm_pvm runs guest user mode on the *host's* GDT, so
//! the selector values are fixed (pvm.md §3): kernel CS 0x10, DS 0x18, user32 CS 0x23, user
//! DS 0x2b, user CS 0x33, and STAR = 0x0023_0010 << 32. Every IDT gate uses an IST stack.
//! Each table sits in its own page so a user page-table half can later map exactly these
//! pages supervisor-only (the kvm_pvm isolation scheme, pvm.md §4.3 rule 3).

use crate::sync::BootCell;
use core::arch::asm;
use core::mem::size_of;

pub const KERNEL_CS: u16 = 0x10;
pub const KERNEL_DS: u16 = 0x18;
pub const USER32_CS: u16 = 0x23;
pub const TSS_SEL: u16 = 0x40;

/// IST slot (1-based, as in the gate descriptor) used by each class of event.
pub const IST_ENTRY: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_NMI_MCE: u8 = 3;

const ENTRY_STACK_SIZE: usize = 4 * 4096;
const FAULT_STACK_SIZE: usize = 2 * 4096;

#[repr(C, align(4096))]
struct Gdt([u64; 512]);

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(4096))]
struct TssPage(Tss);

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(4096))]
struct Idt([Gate; 256]);

#[repr(C, align(4096))]
struct Stack<const N: usize>([u8; N]);

static GDT: BootCell<Gdt> = BootCell::new(Gdt([0; 512]));
static TSS: BootCell<TssPage> = BootCell::new(TssPage(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
}));
const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};
static IDT: BootCell<Idt> = BootCell::new(Idt([EMPTY_GATE; 256]));
static ENTRY_STACK: BootCell<Stack<ENTRY_STACK_SIZE>> = BootCell::new(Stack([0; ENTRY_STACK_SIZE]));
static DF_STACK: BootCell<Stack<FAULT_STACK_SIZE>> = BootCell::new(Stack([0; FAULT_STACK_SIZE]));
static NMI_STACK: BootCell<Stack<FAULT_STACK_SIZE>> = BootCell::new(Stack([0; FAULT_STACK_SIZE]));

extern "C" {
    /// 256 entry stubs of 16 bytes each (entry.S).
    static trap_stubs: [[u8; 16]; 256];
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn stack_top<const N: usize>(s: &BootCell<Stack<N>>) -> u64 {
    s.as_ptr() as u64 + N as u64
}

/// Loads the GDT, TSS and the exception gates needed during early boot (#GP for the
/// platform probe's fixup, #DF, #PF). Runs while kvm_pvm still emulates every kernel
/// instruction, so it does as little as possible; [`init_idt`] installs the rest.
pub fn init_early() {
    // SAFETY: boot runs on one CPU with interrupts disabled; nothing else references the
    // tables yet, and the descriptors written are the kernel's own fixed layout.
    unsafe {
        let gdt = &mut GDT.get_mut().0;
        gdt[1] = 0x00cf_9a00_0000_ffff; // 0x08: 32-bit kernel code (unused, Linux layout)
        gdt[2] = 0x00af_9a00_0000_ffff; // 0x10: 64-bit kernel code
        gdt[3] = 0x00cf_9200_0000_ffff; // 0x18: kernel data
        gdt[4] = 0x00cf_fa00_0000_ffff; // 0x23: 32-bit user code
        gdt[5] = 0x00cf_f200_0000_ffff; // 0x2b: user data
        gdt[6] = 0x00af_fa00_0000_ffff; // 0x33: 64-bit user code
        let tss_base = TSS.as_ptr() as u64;
        let limit = size_of::<Tss>() as u64 - 1;
        gdt[8] = (limit & 0xffff)
            | ((tss_base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit available TSS
            | (((tss_base >> 24) & 0xff) << 56);
        gdt[9] = tss_base >> 32;

        let tss = &mut TSS.get_mut().0;
        let entry_top = stack_top(&ENTRY_STACK);
        tss.rsp = [entry_top, 0, 0];
        tss.ist[usize::from(IST_ENTRY - 1)] = entry_top;
        tss.ist[usize::from(IST_DOUBLE_FAULT - 1)] = stack_top(&DF_STACK);
        tss.ist[usize::from(IST_NMI_MCE - 1)] = stack_top(&NMI_STACK);

        let gdtr = DescriptorPointer {
            limit: (10 * 8 - 1) as u16,
            base: GDT.as_ptr() as u64,
        };
        asm!("lgdt [{}]", in(reg) &gdtr, options(readonly, nostack, preserves_flags));
        asm!(
            "mov ds, {0:x}", "mov es, {0:x}", "mov ss, {0:x}",
            in(reg) KERNEL_DS, options(nostack, preserves_flags)
        );
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack, preserves_flags));

        for vector in [8u8, 13, 14] {
            set_gate(vector);
        }
        let idtr = DescriptorPointer {
            limit: (size_of::<Idt>() - 1) as u16,
            base: IDT.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags));
    }
}

/// Installs every gate. Called once kernel code runs at native speed.
pub fn init_idt() {
    for vector in 0..=255u8 {
        // SAFETY: single CPU, boot; the IDT is live but each gate is written before any
        // event can use it (the events that can happen now have their gates already).
        unsafe { set_gate(vector) };
    }
}

/// # Safety
/// Must not race with event delivery through the same gate.
unsafe fn set_gate(vector: u8) {
    let handler = core::ptr::addr_of!(trap_stubs[usize::from(vector)]) as u64;
    let ist = match vector {
        8 => IST_DOUBLE_FAULT,
        2 | 18 => IST_NMI_MCE,
        _ => IST_ENTRY,
    };
    // #BP and #OF may be raised by user code on purpose (int3/into): DPL 3 keeps them
    // architectural on the native backend; kvm_pvm delivers int3 either way (pvm.md §11).
    let dpl = if vector == 3 || vector == 4 { 3 } else { 0 };
    IDT.get_mut().0[usize::from(vector)] = Gate {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist,
        type_attr: 0x8e | (dpl << 5), // present, 64-bit interrupt gate
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        reserved: 0,
    };
}

/// The kernel-virtual pages kvm_pvm touches while delivering an event from user mode: the
/// tables and every IST stack (mapped supervisor-only in the user page-table half).
pub fn cpu_table_pages() -> [(u64, usize); 6] {
    [
        (IDT.as_ptr() as u64, size_of::<Idt>()),
        (GDT.as_ptr() as u64, size_of::<Gdt>()),
        (TSS.as_ptr() as u64, size_of::<TssPage>()),
        (ENTRY_STACK.as_ptr() as u64, ENTRY_STACK_SIZE),
        (DF_STACK.as_ptr() as u64, FAULT_STACK_SIZE),
        (NMI_STACK.as_ptr() as u64, FAULT_STACK_SIZE),
    ]
}

const _: () = assert!(size_of::<Gate>() == 16);
const _: () = assert!(size_of::<Idt>() == 4096);
const _: () = assert!(size_of::<Tss>() == 104);
