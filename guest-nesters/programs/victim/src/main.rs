//! Does one forbidden thing, named by its argument, and should be killed for it.
//! `ok` exits 0; `secret ADDR` maps memory at ADDR, writes a secret and sleeps.
#![no_std]
#![no_main]

use core::arch::asm;
use fluke_rt::{println, sys};
use sys::ThreadRegs;

#[no_mangle]
fn fluke_main(args: fluke_rt::Args) -> i32 {
    let case = args.get(0).unwrap_or("");
    let addr: u64 = args
        .get(1)
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    println!("victim: {case}");
    // SAFETY: none of these are safe: each is the forbidden access under test, and the kernel
    // is expected to stop the process at it.
    unsafe {
        match case {
            "ok" => return 0,
            "fake-report" => {
                // Prints what a kernel fault report looks like; fluke-vmm must not name it
                // (a program's console_write is not the kernel's output).
                println!("fluke: KERNEL FAULT: page fault (#PF) in kernel mode");
                println!("fluke:   rip 0xffffffff80100000 rsp 0x0 rflags 0x2");
                return 0;
            }
            // `exit N`: exits with status N (decimal): the VMM's handling of every status.
            "exit" => return args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0),
            "null" => {
                let v = core::ptr::read_volatile(core::ptr::null::<u64>());
                println!("read {v}");
            }
            "kernel-read" => {
                let v = core::ptr::read_volatile(0xffff_ffff_8010_0000 as *const u64);
                println!("read {v:#x}");
            }
            "kernel-write" => core::ptr::write_volatile(0xffff_8880_0010_0000 as *mut u64, 1),
            "noncanonical" => {
                let v = core::ptr::read_volatile(0x8000_0000_0000_0000 as *const u64);
                println!("read {v}");
            }
            "read-addr" => {
                let v = core::ptr::read_volatile(addr as *const u64);
                println!("read {v:#x} at {addr:#x}");
            }
            "hlt" => asm!("hlt"),
            "out" => asm!("out dx, al", in("dx") 0x3f8u16, in("al") b'X'),
            "cr3" => asm!("mov rax, cr3", out("rax") _),
            "wrmsr" => asm!("wrmsr", in("ecx") 0x4b56_4d10u32, in("eax") 0u32, in("edx") 0u32),
            "lidt" => {
                let zero = [0u64; 2];
                asm!("lidt [{}]", in(reg) zero.as_ptr());
            }
            "ud2" => asm!("ud2"),
            "int3" => asm!("int3"),
            "div0" => {
                let zero: u64 = core::hint::black_box(0);
                asm!("div {}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
            }
            "return-stub" => {
                // Jump into the kernel's return stub: it only reloads this thread's own values.
                asm!("jmp {}", in(reg) fluke_abi::syscall::layout::RETURN_PAGE + 64);
            }
            "write-rodata" => {
                static RO: u64 = 7;
                core::ptr::write_volatile(core::ptr::addr_of!(RO) as *mut u64, 1);
            }
            "write-text" => core::ptr::write_volatile(fluke_main as *const u8 as *mut u8, 0xcc),
            "write-return-page" => {
                core::ptr::write_volatile(fluke_abi::syscall::layout::RETURN_PAGE as *mut u64, 1)
            }
            "fs-set" => {
                // Natively WRFSBASE is #UD (CR4.FSGSBASE is clear); on kvm_pvm it works and
                // the value must stay this thread's own.
                asm!("wrfsbase {}", in(reg) 0x0005_ec2e_7000_u64);
                sys::sleep_ns(300_000_000);
                let fs: u64;
                asm!("rdfsbase {}", out(reg) fs);
                return if fs == 0x0005_ec2e_7000 { 0 } else { 3 };
            }
            "fs-get" => {
                let fs: u64;
                asm!("rdfsbase {}", out(reg) fs);
                println!("victim: fs base {fs:#x}");
                return if fs == 0 { 0 } else { 4 };
            }
            "hog" => {
                // Touches memory until the kernel refuses: its budget, not the machine's.
                const BASE: u64 = 0x1_0000_0000;
                const SIZE: u64 = 1 << 30;
                if sys::map_anon(BASE, SIZE).is_err() {
                    return 2;
                }
                let mut page = BASE;
                while page < BASE + SIZE {
                    core::ptr::write_volatile(page as *mut u8, 1);
                    page += 4096;
                }
                return 3;
            }
            "object-hog" => {
                // Creates objects until the kernel refuses: each costs a frame of its budget.
                let mut made = 0u64;
                let err = loop {
                    match sys::port_set_create() {
                        Ok(set) => {
                            made += 1;
                            // Dropping the name keeps the object (and its charge): only
                            // the budget can stop this loop.
                            let _ = sys::cap_drop(set);
                        }
                        Err(e) => break e,
                    }
                };
                println!("victim: object-hog made {made} objects, then {err:?}");
                return if err == fluke_abi::syscall::Error::NoMemory {
                    0
                } else {
                    4
                };
            }
            "compat-syscall" => compat_syscall(),
            "compat-syscall-zero" => {
                // Code at address 0 is what a ring-0 jump through a zero CSTAR would run.
                if sys::map_anon(0, 4096).is_ok() {
                    println!("victim: page 0 was mapped");
                    core::ptr::write_volatile(0 as *mut u8, 0xf4); // hlt
                    return 3;
                }
                compat_syscall()
            }
            "sleep-forever" => {
                // The bottom of a deep chain of spaces, alive until the chain is torn down.
                sys::sleep_ns(60_000_000_000);
                return 0;
            }
            "out-later" => {
                // Waits for the parent to stop it and give it IOPL 3, then tries port I/O.
                sys::sleep_ns(100_000_000);
                asm!("cli", "out dx, al", in("dx") 0xf4u16, in("al") 0x55u8);
            }
            "xcr0" => {
                // Natively CR4.OSXSAVE is off and XGETBV is #UD (so is every AVX
                // instruction); on kvm_pvm it reads the host's XCR0. The low byte is the status.
                let xcr0 = xcr0();
                println!("victim: xcr0 {xcr0:#x}");
                return (xcr0 & 0xff) as i32;
            }
            "avx-set" => {
                // Secrets in the upper half of ymm3 and, with AVX-512, in zmm16 and k1; they
                // must still be there after other processes have run, and no other process
                // may see them.
                let secret: u64 = 0x5ec2_e75e_c2e7;
                let avx512 = xcr0() & 0xe0 == 0xe0;
                asm!("vbroadcastsd ymm3, qword ptr [{}]", in(reg) &secret);
                if avx512 {
                    asm!(
                        "vpbroadcastq zmm16, qword ptr [{p}]",
                        "kmovw k1, word ptr [{p}]",
                        p = in(reg) &secret,
                    );
                }
                sys::sleep_ns(300_000_000);
                let v = vector_state(avx512);
                let ymm = v.ymm_upper[3] == [secret, secret];
                let zmm = !avx512 || v.zmm_high[0] == [secret; 8];
                let k = !avx512 || v.k[1] == secret & 0xffff;
                println!("victim: avx-set: ymm3 kept {ymm}, zmm16 kept {zmm}, k1 kept {k}");
                return if ymm && zmm && k { 0 } else { 3 };
            }
            "avx-get" => {
                let avx512 = xcr0() & 0xe0 == 0xe0;
                let v = vector_state(avx512);
                let dirty = |words: &[u64]| words.iter().filter(|&&w| w != 0).count();
                let ymm = dirty(v.ymm_upper.as_flattened());
                let zmm = dirty(v.zmm_high.as_flattened());
                let k = dirty(&v.k);
                println!(
                    "victim: avx-get: non-zero words: ymm upper halves {ymm}, zmm16-31 {zmm}, k0-7 {k} (avx-512 {avx512})"
                );
                return if ymm + zmm + k == 0 { 0 } else { 4 };
            }
            "avx-hold" => {
                // ymm3's upper half holds a value the parent reads and replaces while this
                // thread is stopped (thread_get/set_state STATE_XSTATE).
                let first: u64 = 0x0f1e_57a7_e000_0001;
                asm!("vbroadcastsd ymm3, qword ptr [{}]", in(reg) &first);
                sys::sleep_ns(400_000_000);
                let v = vector_state(false);
                println!(
                    "victim: avx-hold: ymm3 upper {:#x} {:#x}",
                    v.ymm_upper[3][0], v.ymm_upper[3][1]
                );
                return if v.ymm_upper[3] == [0x5e7_ba1e, 0x5e7_ba1e] {
                    0
                } else {
                    5
                };
            }
            "seg-read" => {
                // The parent sets this thread's FS and GS bases while it is stopped; segment-
                // relative loads then read through them (natively too, where user code cannot
                // set them itself).
                if !map_segment_page() {
                    return 2;
                }
                sys::sleep_ns(300_000_000);
                let (fs, gs) = read_through_segments();
                println!("victim: seg-read: fs:[0] {fs:#x}, gs:[8] {gs:#x}");
                return if (fs, gs) == SEGMENT_MARKS { 0 } else { 3 };
            }
            "seg-spin" => {
                // Reads through the FS and GS bases the parent set, without blocking, for
                // 400 ms, while a `seg-reload` process with the same bases resets its own.
                if !map_segment_page() {
                    return 2;
                }
                sys::sleep_ns(200_000_000);
                let (until, mut reads, mut wrong) = (sys::time_ns() + 400_000_000, 0u64, 0u64);
                while sys::time_ns() < until {
                    reads += 1;
                    wrong += u64::from(read_through_segments() != SEGMENT_MARKS);
                }
                println!("victim: seg-spin: {reads} reads, {wrong} through a wrong base");
                return if wrong == 0 && reads > 0 { 0 } else { 3 };
            }
            "seg-reload" => {
                // Loads the user data selector into FS and GS (natively that resets both
                // bases to 0), then yields: a thread with the same saved bases that runs
                // next must not inherit the reset ones.
                sys::sleep_ns(200_000_000);
                for _ in 0..200 {
                    asm!("mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0x2bu64);
                    sys::yield_now();
                }
                println!("victim: seg-reload: 200 selector loads");
                return 0;
            }
            "gs-set" => {
                // As fs-set, for the GS base (kept by the host on kvm_pvm, switched through
                // MSR_KERNEL_GS_BASE).
                asm!("wrgsbase {}", in(reg) 0x0005_ec2e_6000_u64);
                sys::sleep_ns(300_000_000);
                let gs: u64;
                asm!("rdgsbase {}", out(reg) gs);
                return if gs == 0x0005_ec2e_6000 { 0 } else { 3 };
            }
            "gs-get" => {
                let gs: u64;
                asm!("rdgsbase {}", out(reg) gs);
                println!("victim: gs base {gs:#x}");
                return if gs == 0 { 0 } else { 4 };
            }
            "floor-seg" => {
                // A floor-pair partner whose FS and GS bases the parent sets first (stopped,
                // before the pair forms); every switch back must find them intact.
                if !map_segment_page() {
                    return 2;
                }
                sys::sleep_ns(200_000_000);
                let (switches, bad) = floor_partner(500, || {
                    let switched = sys::floor_switch();
                    (
                        switched,
                        switched && read_through_segments() != SEGMENT_MARKS,
                    )
                });
                println!(
                    "victim: floor-seg: {switches} switches, {bad} with a wrong FS or GS base"
                );
                return if switches == 500 && bad == 0 { 0 } else { 3 };
            }
            "floor-seg-reload" => {
                // A `floor-seg` process's partner with the same bases: between switches it
                // loads the user data selector into FS and GS (natively resetting its own
                // bases), which the floor switch to `floor-seg` must not carry over. It
                // switches until the pair ends (its partner has made its 500).
                sys::sleep_ns(200_000_000);
                let until = sys::time_ns() + 1_000_000_000;
                while !sys::floor_switch() && sys::time_ns() < until {
                    let _ = sys::floor_join(PASSED_BENCH_CAP);
                }
                let mut switches = 0u32;
                loop {
                    asm!("mov fs, {0:x}", "mov gs, {0:x}", in(reg) 0x2bu64);
                    if !sys::floor_switch() {
                        break;
                    }
                    switches += 1;
                }
                println!("victim: floor-seg-reload: {switches} switches after selector loads");
                return if switches >= 400 { 0 } else { 3 };
            }
            "floor-nt" => {
                // A floor-pair partner that enters every floor switch with RFLAGS.NT set
                // (POPF sets it at any privilege): the switch back must return with RFLAGS
                // sanitised as every kernel call's return is, not with the R11 SYSCALL saved.
                // (On kvm_pvm NT does not come back even without the floor path's RFLAGS
                // mask: only the native backend tells that mask's absence.)
                sys::sleep_ns(200_000_000);
                let (switches, kept) = floor_partner(300, floor_switch_with_nt);
                println!("victim: floor-nt: {switches} switches, {kept} returned with NT set");
                return if switches == 300 && kept == 0 { 0 } else { 3 };
            }
            "floor-partner" => {
                // Switches for as long as its parent keeps the pair going, so the pair can
                // end only by something else (preemption); it stops once no switch has
                // happened for 300 ms.
                let (mut switches, mut last) = (0u64, sys::time_ns());
                while sys::time_ns() - last < 300_000_000 {
                    if sys::floor_switch() {
                        switches += 1;
                        last = sys::time_ns();
                    } else {
                        let _ = sys::floor_join(PASSED_BENCH_CAP);
                    }
                }
                println!("victim: floor-partner: {switches} switches, then none for 300 ms");
                return 0;
            }
            "floor-out" => {
                // A floor-pair partner that, after some switches, tries port I/O: it must
                // fault even if the parent gave it IOPL 3 through thread_set_state.
                let (switches, _) = floor_partner(50, || (sys::floor_switch(), false));
                if switches < 50 {
                    println!("victim: floor-out: only {switches} switches");
                    return 4;
                }
                println!("victim: floor-out: {switches} switches, now port I/O");
                asm!("cli", "out dx, al", in("dx") 0xf4u16, in("al") 0x55u8);
            }
            "floor-nocap" => {
                // Spawned without the benchmark capability: every floor path is refused.
                let join = sys::floor_join(0);
                let open = sys::enable_floor_calls(0);
                let (floor, switch) = (sys::floor_syscall(), sys::floor_switch());
                println!("victim: floor-nocap: join {join:?}, enable {open:?}, floor call {floor}, floor switch {switch}");
                let refused = join == Err(fluke_abi::syscall::Error::BadCap)
                    && open == Err(fluke_abi::syscall::Error::BadCap);
                return if refused && !floor && !switch { 0 } else { 3 };
            }
            "floor-outsider" => {
                // Not in the pair: the floor switch is an unknown call for it. It wakes
                // from its sleep while its parent's pair is switching.
                sys::sleep_ns(300_000_000);
                let switched = sys::floor_switch();
                println!("victim: floor-outsider: switched {switched}");
                return if switched { 3 } else { 0 };
            }
            "fpu-set" => {
                // Secrets in x87 and SSE registers; they must still be there after another
                // process has run, and no other process may see them.
                let secret: u64 = 0x5ec2_e75e_c2e7;
                asm!(
                    "fninit",
                    "fild qword ptr [{p}]",
                    "movq xmm0, {v}",
                    "movq xmm7, {v}",
                    p = in(reg) &secret,
                    v = in(reg) secret,
                );
                sys::sleep_ns(300_000_000);
                let area = fxsave();
                let x87 = area.0[32..42] != [0; 10];
                let xmm0 = area.0[160..168] == secret.to_le_bytes();
                let xmm7 = area.0[160 + 7 * 16..168 + 7 * 16] == secret.to_le_bytes();
                println!("victim: fpu-set: x87 kept {x87}, xmm0 kept {xmm0}, xmm7 kept {xmm7}");
                return if x87 && xmm0 && xmm7 { 0 } else { 3 };
            }
            "fpu-get" => {
                let area = fxsave();
                let dirty_regs = area.0[32..416].iter().filter(|&&b| b != 0).count();
                let fsw = u16::from_le_bytes([area.0[2], area.0[3]]);
                let tags = area.0[4];
                println!(
                    "victim: fpu-get: {dirty_regs} non-zero register bytes, status word {fsw:#x}, tags {tags:#x}"
                );
                return if dirty_regs == 0 && fsw == 0 && tags == 0 {
                    0
                } else {
                    4
                };
            }
            "rsp-spin" | "rsp-syscall" | "rsp-rep" | "rsp-rep-keeper" | "rsp-rep-fixkeeper"
            | "rsp-rep-self" | "rsp-rep-pool" | "rsp-respawn" => {
                // `CASE RSP [N [MIB]]` (hole 7 of issue 13): a loop run with RSP = RSP
                // (hex; 0: the real stack), the stack pointer restored after each
                // iteration: N user-mode iterations (`rsp-spin`) or N null kernel calls
                // (`rsp-syscall`), timed; or, forever, `rep stosb` over MIB MiB (`rsp-rep`),
                // the same with a keeper of our own that puts the thread back at its loop
                // whenever it faults (`rsp-rep-keeper`: the fault is the loop), or that
                // repairs RSP and puts it back before the load of the bad one
                // (`rsp-rep-fixkeeper`: each round trip one more stretch of emulated code);
                // or putting the good RSP back itself after each fill (`rsp-rep-self`: no
                // stack access through the bad one); or 32 such looping threads taking turns
                // under one repairing keeper (`rsp-rep-pool`); or a parent starting a new
                // `rsp-rep` child each time the last one is killed (`rsp-respawn`).
                let n: u64 = args
                    .get(2)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1_000_000);
                let mib: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(16);
                return match case {
                    "rsp-spin" => rsp_spin(addr, n),
                    "rsp-syscall" => rsp_syscall(addr, n),
                    "rsp-rep" => rsp_rep(addr, mib, None),
                    "rsp-rep-keeper" => rsp_rep(addr, mib, Some(Repair::No)),
                    "rsp-rep-self" => rsp_rep_self(addr, mib),
                    "rsp-rep-pool" => rsp_rep_pool(addr, mib),
                    "rsp-respawn" => loop {
                        let rsp = args.get(1).unwrap_or("0");
                        let _ =
                            sys::spawn("victim", &["rsp-rep", rsp, "1", "16"]).and_then(sys::wait);
                    },
                    _ => rsp_rep(addr, mib, Some(Repair::Rsp)),
                };
            }
            "ticks" => {
                // `ticks NAME MS`: sleeps of 1 ms for MS ms; how many fit is this
                // process's share of the machine's wake-ups.
                let name = args.get(1).unwrap_or("ticker");
                let ms: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(500);
                return ticks(name, ms);
            }
            "fanout" => {
                let depth = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(24);
                return fanout(depth);
            }
            "ladder" => {
                let levels = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8);
                let regions = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(2000);
                return ladder(levels, regions);
            }
            "allowance" => return allowance(),
            "devmem-nocap" => return devmem_nocap(),
            // Reads ADDR: a device's physical address named as a virtual one, or the
            // kernel's direct map there; either must fault, never reach the device.
            "devmem-touch" => {
                sys::sleep_ns(30_000_000); // (a parent may map something there first)
                let v = core::ptr::read_volatile(addr as *const u32);
                println!("victim: devmem-touch: read {v:#x} at {addr:#x}");
            }
            // Maps the device-memory capability it was given (name 0), waits while its
            // parent destroys the object, then reads: the mapping must be gone.
            "devmem-map-read" => {
                let r = sys::devmem_map(0, fluke_abi::syscall::SELF_SPACE, DEVMEM_VA, false);
                println!("victim: devmem-map-read: mapped {r:?}");
                sys::sleep_ns(200_000_000);
                let v = core::ptr::read_volatile(DEVMEM_VA as *const u32);
                println!("victim: devmem-map-read: read {v:#x} after the destroy");
            }
            "devmem-remap-read" => {
                // The whole window, its first page discarded and mapped again as a part of
                // its own: the destroy must still unmap the rest (read at its fourth page).
                let space = fluke_abi::syscall::SELF_SPACE;
                let r = sys::devmem_map(0, space, DEVMEM_VA, false)
                    .and_then(|_| sys::mem_discard(DEVMEM_VA, 4096))
                    .and_then(|_| sys::devmem_map_part(0, space, DEVMEM_VA, 0, 0, 0x1000));
                println!("victim: devmem-remap-read: mapped {r:?}");
                sys::sleep_ns(200_000_000);
                let v = core::ptr::read_volatile((DEVMEM_VA + 0x3000) as *const u32);
                println!("victim: devmem-remap-read: read {v:#x} after the destroy");
            }
            "secret" => {
                if sys::map_anon(addr, 4096).is_err() {
                    return 2;
                }
                core::ptr::write_volatile(addr as *mut u64, 0x005e_c2e7);
                println!("victim: secret at {addr:#x}");
                sys::sleep_ns(2_000_000_000);
                return 0;
            }
            _ => {
                println!("victim: unknown case {case}");
                return 2;
            }
        }
    }
    println!("victim: survived {case}");
    1
}

/// Far-jumps into the 32-bit user code segment (0x23) and executes SYSCALL there: the
/// kernel must refuse it (a #GP for this process), never enter ring 0 at CSTAR's address.
/// (A far jump, not a far return: QEMU's TCG reads a far return's stack with supervisor
/// accesses, which SMAP then refuses, so a far return never reaches compatibility mode
/// there.)
///
/// # Safety
/// Leaves 64-bit mode; only returns if the kernel lets the 32-bit SYSCALL return, which it
/// must not.
unsafe fn compat_syscall() {
    let mut far_pointer = [0u8; 8]; // m16:32: offset, then selector
    asm!(
        "lea {t}, [rip + 2f]",
        "mov dword ptr [{p}], {t:e}",
        "mov word ptr [{p} + 4], 0x23",
        "jmp fword ptr [{p}]",
        ".code32",
        "2: .byte 0x0f, 0x05", // syscall, in compatibility mode
        ".byte 0x0f, 0x0b",    // ud2: the call came back, which it must not
        ".code64",
        p = in(reg) far_pointer.as_mut_ptr(),
        t = out(reg) _,
    );
}

/// `n` null kernel calls, each made with RSP = `rsp` (0: left alone) and the real stack
/// pointer restored after it; prints the time per call.
fn rsp_syscall(rsp: u64, n: u64) -> i32 {
    let khz = sys::bench(fluke_abi::syscall::BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let start = sys::rdtsc();
    for _ in 0..n {
        // SAFETY: RSP is saved in R12 (the kernel returns every register but RAX, RCX and
        // R11 unchanged) and restored before anything uses the stack; nothing between the
        // two moves touches memory.
        unsafe {
            asm!(
                "mov r12, rsp",
                "test r13, r13",
                "jz 2f",
                "mov rsp, r13",
                "2: syscall",
                "mov rsp, r12",
                in("r13") rsp,
                out("r12") _,
                inlateout("rax") 0u64 => _,
                lateout("rcx") _, lateout("r11") _,
            );
        }
    }
    let ticks = sys::rdtsc() - start;
    let ns = ticks * 1_000_000 / khz.max(1);
    println!(
        "victim: rsp-syscall: {n} calls with rsp {rsp:#x} in {} ms, {} ns each",
        ns / 1_000_000,
        ns / n.max(1)
    );
    0
}

/// A user-mode loop of `n` iterations run with RSP = `rsp` (0: left alone).
fn rsp_spin(rsp: u64, n: u64) -> i32 {
    let khz = sys::bench(fluke_abi::syscall::BenchOp::TscKhz, 0).unwrap_or(1_000_000);
    let start = sys::rdtsc();
    // SAFETY: RSP is saved in R12 and restored before anything uses the stack.
    unsafe {
        asm!(
            "mov r12, rsp",
            "test r13, r13",
            "jz 2f",
            "mov rsp, r13",
            "2: dec rcx",
            "jnz 2b",
            "mov rsp, r12",
            in("r13") rsp,
            out("r12") _,
            inout("rcx") n.max(1) => _,
        );
    }
    let ticks = sys::rdtsc() - start;
    let ns = ticks * 1_000_000 / khz.max(1);
    println!(
        "victim: rsp-spin: {n} iterations with rsp {rsp:#x} in {} ms, {} ps each",
        ns / 1_000_000,
        ns * 1000 / n.max(1)
    );
    0
}

/// Where `rsp-rep` fills.
const REP_BUF: u64 = 0x2_0000_0000;

/// What the keeper of `rsp-rep-keeper` and `rsp-rep-fixkeeper` does at each fault.
#[derive(Clone, Copy)]
enum Repair {
    /// Puts the thread back at the fill, RSP unchanged.
    No,
    /// Sets a good RSP and puts the thread back at the start of the loop, which loads the
    /// bad one again.
    Rsp,
}

/// `rep stosb` over `mib` MiB at [`REP_BUF`] with RSP = `rsp`, forever. With a `keeper`, the
/// loop runs in a second thread whose exception keeper is this one: each fault (the `push`
/// after the fill, through the non-canonical RSP) is answered as [`Repair`] says, so the
/// thread faults and is resumed without end.
fn rsp_rep(rsp: u64, mib: u64, keeper: Option<Repair>) -> i32 {
    let len = mib << 20;
    if sys::map_anon(REP_BUF, len).is_err() {
        return 2;
    }
    // SAFETY: our own memory, just mapped; every page present before the loop.
    unsafe { core::ptr::write_bytes(REP_BUF as *mut u8, 1, len as usize) };
    let regs = [rsp, len, REP_BUF];
    let Some(repair) = keeper else {
        // SAFETY: the loop only writes the buffer and never returns; the stack it pushes to
        // is ours (RSP 0) or a non-canonical one, where the push faults.
        unsafe { victim_rep_loop(regs.as_ptr() as u64) }
    };
    match rep_keeper(&regs, repair) {
        Ok(never) => match never {},
        Err(e) => {
            println!("victim: rsp-rep-keeper: {e:?}");
            2
        }
    }
}

/// `rep stosb` over `mib` MiB at [`REP_BUF`] with RSP = `rsp`, forever, the good RSP put
/// back after each fill (so the thread could enter the kernel with either).
fn rsp_rep_self(rsp: u64, mib: u64) -> i32 {
    let len = mib << 20;
    if sys::map_anon(REP_BUF, len).is_err() {
        return 2;
    }
    // SAFETY: our own memory, just mapped; every page present before the loop.
    unsafe { core::ptr::write_bytes(REP_BUF as *mut u8, 1, len as usize) };
    let regs = [rsp, len, REP_BUF];
    // SAFETY: the loop only writes the buffer and never returns; it touches no stack.
    unsafe { victim_rep_self_loop(regs.as_ptr() as u64) }
}

/// Threads in [`rsp_rep_pool`].
const POOL_THREADS: usize = 32;

/// [`POOL_THREADS`] threads looping as `rsp-rep-fixkeeper`'s one does, each kept by this
/// thread, which repairs RSP at every fault: the threads take turns, so a charge per thread
/// would let the program have the machine (review of H7-1).
fn rsp_rep_pool(rsp: u64, mib: u64) -> i32 {
    use fluke_abi::syscall::ipc::NO_CAP;
    const STACKS: u64 = 0x3_0000_0000;
    const STACK_LEN: u64 = 4 * 4096;
    let len = mib << 20;
    let n = POOL_THREADS as u64;
    if sys::map_anon(REP_BUF, len).is_err() || sys::map_anon(STACKS, n * STACK_LEN).is_err() {
        return 2;
    }
    // SAFETY: our own memory, just mapped; every page present before the loop.
    unsafe { core::ptr::write_bytes(REP_BUF as *mut u8, 1, len as usize) };
    let regs = [rsp, len, REP_BUF];
    let Ok(set) = sys::port_set_create() else {
        return 2;
    };
    let entry: extern "C" fn(u64) -> ! = victim_rep_loop_entry;
    let mut workers = [NO_CAP; POOL_THREADS];
    for (i, w) in workers.iter_mut().enumerate() {
        let top = STACKS + (i as u64 + 1) * STACK_LEN;
        let started = sys::port_create(set, i as u64)
            .and_then(|port| fluke_rt::thread::start_kept(entry, regs.as_ptr() as u64, top, port));
        match started {
            Ok(t) => *w = t,
            Err(e) => {
                println!("victim: rsp-rep-pool: {e:?}");
                return 2;
            }
        }
    }
    println!("victim: rsp-rep-pool: {POOL_THREADS} threads");
    let start = victim_rep_loop as *const () as u64;
    let mut msg = sys::ipc_wait(set);
    loop {
        let badge = msg.map(|m| m.badge as usize).unwrap_or(usize::MAX);
        if let Some(&w) = workers.get(badge) {
            let top = STACKS + (badge as u64 + 1) * STACK_LEN;
            let _ = sys::thread_stop(w)
                .and_then(|_| sys::thread_get_state(w))
                .and_then(|r| {
                    let back = ThreadRegs {
                        rip: start,
                        rdi: regs.as_ptr() as u64,
                        rsp: top - 8,
                        ..r
                    };
                    sys::thread_set_state(w, &back)
                })
                .and_then(|_| sys::thread_resume(w));
        }
        msg = sys::ipc_reply_wait(set, [0; 4], NO_CAP);
    }
}

/// The keeper of the looping thread: answers every fault as `repair` says.
fn rep_keeper(
    regs: &[u64; 3],
    repair: Repair,
) -> Result<core::convert::Infallible, fluke_abi::syscall::Error> {
    use fluke_abi::syscall::ipc::NO_CAP;
    const STACK: u64 = 0x3_0000_0000;
    sys::map_anon(STACK, 16 * 4096)?;
    let set = sys::port_set_create()?;
    let port = sys::port_create(set, 1)?;
    let entry: extern "C" fn(u64) -> ! = victim_rep_loop_entry;
    let worker =
        fluke_rt::thread::start_kept(entry, regs.as_ptr() as u64, STACK + 16 * 4096, port)?;
    println!("victim: rsp-rep-keeper: keeping the loop");
    let again = core::ptr::addr_of!(victim_rep_again) as u64;
    let start = victim_rep_loop as *const () as u64;
    let mut msg = sys::ipc_wait(set);
    loop {
        if msg.is_ok() {
            let put_back = |r: ThreadRegs| match repair {
                Repair::No => ThreadRegs { rip: again, ..r },
                Repair::Rsp => ThreadRegs {
                    rip: start,
                    rdi: regs.as_ptr() as u64,
                    rsp: STACK + 15 * 4096,
                    ..r
                },
            };
            let _ = sys::thread_stop(worker)
                .and_then(|_| sys::thread_get_state(worker))
                .and_then(|r| sys::thread_set_state(worker, &put_back(r)))
                .and_then(|_| sys::thread_resume(worker));
        }
        msg = sys::ipc_reply_wait(set, [0; 4], NO_CAP);
    }
}

extern "C" fn victim_rep_loop_entry(arg: u64) -> ! {
    // SAFETY: as in rsp_rep; `arg` points at the keeper's `regs`, which outlive the loop
    // (the keeper never returns).
    unsafe { victim_rep_loop(arg) }
}

extern "C" {
    /// `[rsp, len, buf]` at `arg`: loads RSP, then fills `len` bytes at `buf` and pushes
    /// (a stack fault through a non-canonical RSP), again and again.
    fn victim_rep_loop(arg: u64) -> !;
    /// Where the loop fills again: the keeper resumes the thread here.
    static victim_rep_again: u8;
    /// `[rsp, len, buf]` at `arg`: loads RSP, fills, puts the good RSP back, again and
    /// again.
    fn victim_rep_self_loop(arg: u64) -> !;
}

core::arch::global_asm!(
    ".pushsection .text.victim_rep_loop, \"ax\"",
    ".global victim_rep_loop",
    ".global victim_rep_again",
    "victim_rep_loop:",
    "mov r13, [rdi]",
    "mov r14, [rdi + 8]",
    "mov r15, [rdi + 16]",
    "test r13, r13",
    "jz 1f",
    "mov rsp, r13",
    "1:",
    "victim_rep_again:",
    "mov rcx, r14",
    "mov rdi, r15",
    "mov al, 7",
    "rep stosb",
    "push rax",
    "pop rax",
    "jmp victim_rep_again",
    ".popsection",
    ".pushsection .text.victim_rep_self_loop, \"ax\"",
    ".global victim_rep_self_loop",
    "victim_rep_self_loop:",
    "mov r12, rsp",
    "mov r13, [rdi]",
    "mov r14, [rdi + 8]",
    "mov r15, [rdi + 16]",
    "2:",
    "mov rsp, r13",
    "mov rcx, r14",
    "mov rdi, r15",
    "mov al, 7",
    "rep stosb",
    "mov rsp, r12",
    "jmp 2b",
    ".popsection",
);

/// `ticks NAME MS`: 1-ms sleeps until MS ms have passed; prints how many.
fn ticks(name: &str, ms: u64) -> i32 {
    let (start, mut worst, mut n) = (sys::time_ns(), 0u64, 0u64);
    while sys::time_ns() - start < ms * 1_000_000 {
        let t = sys::time_ns();
        sys::sleep_ns(1_000_000);
        worst = worst.max(sys::time_ns() - t);
        n += 1;
    }
    println!(
        "victim: ticks {name}: {n} sleeps of 1 ms in {ms} ms, the longest {} us",
        worst / 1000
    );
    0
}

/// Where the `fanout` case's parent puts a capability to our own space.
const OWN_SPACE: u64 = 0;
/// The page whose views `fanout` multiplies, and where level `d` of them lies
/// (`FANOUT_LEVELS * d`, 2^d pages).
const FANOUT_TOP: u64 = 0x8_0000_0000;
const FANOUT_LEVELS: u64 = 0x10_0000_0000;
const FANOUT_MARK: u64 = 0xfa2_0u64 << 20;

/// Finding F1: one page seen 2^depth times. Our own page is a region, mapped twice into our
/// own space; the two views are made a region, mapped twice; and so on, `depth` levels (the
/// views of one page double at each). The kernel must refuse a level once the page's views
/// would pass its bound; then every walk over them (`mem_referenced`, `mem_discard`,
/// destroying the first region) must finish, and leave no view of the discarded page.
fn fanout(depth: u64) -> i32 {
    use fluke_abi::syscall::ipc::NO_CAP;
    // The parent gives us our own space's capability after the spawn.
    let mut waited = 0;
    while !sys::holds(OWN_SPACE, fluke_abi::syscall::objstate::SPACE) {
        waited += 1;
        if waited > 100_000 {
            println!("victim: fanout: no capability to our own space");
            return 2;
        }
        sys::yield_now();
    }
    if sys::map_anon(FANOUT_TOP, 4096).is_err() {
        return 2;
    }
    // SAFETY: our own page, just mapped.
    unsafe { core::ptr::write_volatile(FANOUT_TOP as *mut u64, FANOUT_MARK) };
    let Ok(first) = sys::region_create(FANOUT_TOP, 4096, NO_CAP) else {
        return 2;
    };
    let (mut region, mut size, mut levels, mut refused) = (first, 4096u64, 0u64, None);
    for d in 1..=depth {
        let base = FANOUT_LEVELS * d;
        let made = sys::mapping_create(OWN_SPACE, region, base, true)
            .and_then(|_| sys::mapping_create(OWN_SPACE, region, base + size, true));
        if let Err(e) = made {
            refused = Some((d, e));
            break;
        }
        levels = d;
        size *= 2;
        match sys::region_create(base, size, NO_CAP) {
            Ok(r) => region = r,
            Err(e) => {
                println!("victim: fanout: region of level {d}: {e:?}");
                return 2;
            }
        }
    }
    let views = (2u64 << levels) - 2;
    println!(
        "victim: fanout: {levels} levels of doubling ({views} views of one page), then {refused:?}"
    );
    // Bring in the views (all of them when they are few, else the ends of each level): each
    // reads our page.
    let all = views <= 4096;
    let touched = |f: &mut dyn FnMut(u64)| {
        for d in 1..=levels {
            let (base, pages) = (FANOUT_LEVELS * d, 1u64 << d);
            if all {
                (0..pages).for_each(|i| f(base + i * 4096));
            } else {
                f(base);
                f(base + (pages - 1) * 4096);
            }
        }
    };
    let mut wrong = 0u64;
    // SAFETY: views of our own page, mapped by the mappings above.
    touched(&mut |va| {
        wrong += u64::from(unsafe { core::ptr::read_volatile(va as *const u64) } != FANOUT_MARK)
    });
    let referenced = sys::mem_referenced(FANOUT_TOP);
    let discarded = sys::mem_discard(FANOUT_TOP, 4096);
    // The page is gone from every view: each brings in the page anew, a zero page. A view
    // left behind would still show the old frame (freed: a stale view).
    let mut stale = 0u64;
    // SAFETY: as above.
    touched(&mut |va| {
        stale += u64::from(unsafe { core::ptr::read_volatile(va as *const u64) } != 0)
    });
    let destroyed = sys::destroy(first);
    println!(
        "victim: fanout: {wrong} views read wrong; referenced {referenced:?}, discarded {discarded:?}, {stale} stale views, first region destroyed {destroyed:?}"
    );
    i32::from(
        refused.is_none()
            || wrong != 0
            || stale != 0
            || referenced != Ok(true)
            || discarded.is_err()
            || destroyed.is_err(),
    )
}

/// Builds a doubling ladder of `levels` levels under a region of `top_pages` pages at
/// `FANOUT_TOP` (as `fanout`: each level maps the region above it twice): the first region
/// and the deepest, or the level that failed.
fn build_ladder(
    levels: u64,
    top_pages: u64,
) -> Result<(u64, u64), (u64, fluke_abi::syscall::Error)> {
    use fluke_abi::syscall::ipc::NO_CAP;
    let first = sys::region_create(FANOUT_TOP, top_pages * 4096, NO_CAP).map_err(|e| (0, e))?;
    let (mut region, mut size) = (first, top_pages * 4096);
    for d in 1..=levels {
        let base = FANOUT_LEVELS * d;
        sys::mapping_create(OWN_SPACE, region, base, true)
            .and_then(|_| sys::mapping_create(OWN_SPACE, region, base + size, true))
            .map_err(|e| (d, e))?;
        size *= 2;
        region = sys::region_create(base, size, NO_CAP).map_err(|e| (d, e))?;
    }
    Ok((first, region))
}

/// Waits for the parent to give us our own space's capability (`ladder`, `allowance`).
fn wait_own_space() -> bool {
    let mut waited = 0;
    while !sys::holds(OWN_SPACE, fluke_abi::syscall::objstate::SPACE) {
        waited += 1;
        if waited > 100_000 {
            return false;
        }
        sys::yield_now();
    }
    true
}

/// Where `ladder` maps the deepest region once, and where its one-page regions lie.
const LADDER_UNDER: u64 = FANOUT_LEVELS * 20;
const LADDER_PAGES: u64 = FANOUT_LEVELS * 21;

/// Finding F1-1, as the review built it: removing a mapping walked every route upstream of
/// it, each step a scan of every mapping. A doubling ladder of `levels` levels under a top
/// region of `regions` pages (2^levels routes from the deepest region to the top), the
/// deepest region mapped once, and then `regions` one-page regions of our own memory mapped
/// over the top, one a page (each planned alone: nothing is upstream of it); so 2^levels x
/// `regions` routes lead up from the mapping under the ladder. Then one `destroy` of that
/// mapping, timed, and of the ladder's first region. The kernel must stay correct: both
/// ends of the top read our pages through every level, and the ladder still does after the
/// mapping under it is gone.
fn ladder(levels: u64, regions: u64) -> i32 {
    use fluke_abi::syscall::ipc::NO_CAP;
    if !wait_own_space() {
        println!("victim: ladder: no capability to our own space");
        return 2;
    }
    if regions == 0 || sys::map_anon(LADDER_PAGES, regions * 4096).is_err() {
        println!("victim: ladder: no memory for {regions} pages");
        return 2;
    }
    let last = (regions - 1) * 4096;
    // SAFETY: our own pages, just mapped.
    unsafe {
        core::ptr::write_volatile(LADDER_PAGES as *mut u64, FANOUT_MARK);
        core::ptr::write_volatile((LADDER_PAGES + last) as *mut u64, FANOUT_MARK + 1);
    }
    let (first, deepest) = match build_ladder(levels, regions) {
        Ok(r) => r,
        Err((d, e)) => {
            println!("victim: ladder: level {d}: {e:?}");
            return 2;
        }
    };
    let Ok(under) = sys::mapping_create(OWN_SPACE, deepest, LADDER_UNDER, true) else {
        println!("victim: ladder: the deepest region could not be mapped");
        return 2;
    };
    let mut made = 0u64;
    let t = sys::time_ns();
    for i in 0..regions {
        // The capabilities are dropped (the objects stay ours until we end): our table
        // holds 256.
        let made_one = sys::region_create(LADDER_PAGES + i * 4096, 4096, NO_CAP).and_then(|r| {
            let m = sys::mapping_create(OWN_SPACE, r, FANOUT_TOP + i * 4096, true)?;
            sys::cap_drop(m)?;
            sys::cap_drop(r)
        });
        if let Err(e) = made_one {
            println!("victim: ladder: one-page region {i}: {e:?}");
            break;
        }
        made += 1;
    }
    let made_us = (sys::time_ns() - t) / 1000;
    let read = |va: u64| {
        // SAFETY: views of our own pages, mapped above.
        unsafe { core::ptr::read_volatile(va as *const u64) }
    };
    let seen_under =
        read(LADDER_UNDER) == FANOUT_MARK && read(LADDER_UNDER + last) == FANOUT_MARK + 1;
    let t = sys::time_ns();
    let destroyed = sys::destroy(under);
    let under_us = (sys::time_ns() - t) / 1000;
    // The ladder's own views are untouched: the last level's first page.
    let seen_level = read(FANOUT_LEVELS * levels) == FANOUT_MARK;
    let t = sys::time_ns();
    let ladder_destroyed = sys::destroy(first);
    let ladder_us = (sys::time_ns() - t) / 1000;
    println!(
        "victim: ladder: {levels} levels, {made} one-page regions mapped over it (in {made_us} us); read through it {seen_under}/{seen_level}; the mapping under it destroyed {destroyed:?} in {under_us} us; the first region destroyed {ladder_destroyed:?} in {ladder_us} us"
    );
    i32::from(
        made != regions
            || !seen_under
            || !seen_level
            || destroyed.is_err()
            || ladder_destroyed.is_err(),
    )
}

/// Finding F1-3: our page mapped into two children of ours, each with an allowance (here
/// two addresses of our own space stand for them, each passing its view on): the first
/// passes its view on until refused; the second still can. Without allowances the first
/// would have used up the page's views.
fn allowance() -> i32 {
    use fluke_abi::syscall::ipc::NO_CAP;
    const SHARED: u64 = FANOUT_TOP;
    const FIRST: u64 = FANOUT_LEVELS;
    const SECOND: u64 = FANOUT_LEVELS * 2;
    const PASSED: u64 = FANOUT_LEVELS * 3;
    const ALLOWANCE: u16 = 300;
    if !wait_own_space() || sys::map_anon(SHARED, 4096).is_err() {
        println!("victim: allowance: no capability to our own space");
        return 2;
    }
    let Ok(shared) = sys::region_create(SHARED, 4096, NO_CAP) else {
        return 2;
    };
    let both = [FIRST, SECOND]
        .map(|at| sys::mapping_create_allowed(OWN_SPACE, shared, at, sys::MAP_WRITE, ALLOWANCE));
    // A third would not fit in the page's MAX_VIEWS with the first two.
    let third =
        sys::mapping_create_allowed(OWN_SPACE, shared, PASSED, sys::MAP_WRITE, 3 * ALLOWANCE);
    let (Ok(first), Ok(second)) = (
        sys::region_create(FIRST, 4096, NO_CAP),
        sys::region_create(SECOND, 4096, NO_CAP),
    ) else {
        return 2;
    };
    let mut passed = 0u64;
    let refused = loop {
        // The capability is dropped (the mapping stays ours): our table holds 256.
        match sys::mapping_create(OWN_SPACE, first, PASSED + passed * 4096, true)
            .and_then(sys::cap_drop)
        {
            Ok(_) => passed += 1,
            Err(e) => break e,
        }
    };
    let sibling = sys::mapping_create(OWN_SPACE, second, PASSED + (passed + 1) * 4096, true);
    println!(
        "victim: allowance: two mappings of allowance {ALLOWANCE} {:?} {:?}, a third {third:?}; the first passed on {passed} then {refused:?}; the second then {:?}",
        both[0].is_ok(),
        both[1].is_ok(),
        sibling.is_ok()
    );
    i32::from(
        both.iter().any(Result::is_err)
            || third != Err(fluke_abi::syscall::Error::TooManyViews)
            || passed != u64::from(ALLOWANCE) - 1
            || sibling.is_err(),
    )
}

#[repr(C, align(16))]
struct FxArea([u8; 512]);

/// Switches to the floor-pair partner until it has switched `n` times or has not for a
/// second (the pair never formed or ended early: the caller sees fewer than `n`), joining
/// the pair (and yielding so the partner can complete it) whenever it is not active.
/// `switch` makes one floor switch: whether it switched, and whether something came back
/// wrong. Returns the switches and the wrong ones.
fn floor_partner(n: u32, mut switch: impl FnMut() -> (bool, bool)) -> (u32, u32) {
    let (mut switches, mut bad, mut last) = (0u32, 0u32, sys::time_ns());
    while switches < n && sys::time_ns() - last < 1_000_000_000 {
        let (switched, wrong) = switch();
        bad += u32::from(wrong);
        if switched {
            switches += 1;
            last = sys::time_ns();
        } else {
            // Join: complete the pair (running in it), or wait in the call for a partner.
            let _ = sys::floor_join(PASSED_BENCH_CAP);
        }
    }
    (switches, bad)
}

/// Where a floor-pair partner holds the benchmark capability: its parent passes it first.
const PASSED_BENCH_CAP: u64 = 0;

/// RFLAGS.NT, which user code may set but the kernel never returns to user mode with.
const RFLAGS_NT: u64 = 1 << 14;

/// One floor switch entered with RFLAGS.NT set: whether it switched, and whether NT was
/// still set when the call returned (it is cleared again at once either way).
fn floor_switch_with_nt() -> (bool, bool) {
    let (ret, flags): (u64, u64);
    // SAFETY: the kernel returns with every register as it was but RAX (the result) and RCX
    // and R11 (clobbered by SYSCALL); the pushes and pops are balanced and NT has no effect
    // on user code that executes no IRET.
    unsafe {
        asm!(
            "pushfq",
            "or qword ptr [rsp], {nt}",
            "popfq",
            "syscall",
            "pushfq",
            "mov {flags}, [rsp]",
            "and qword ptr [rsp], {keep}",
            "popfq",
            nt = const RFLAGS_NT,
            keep = const !RFLAGS_NT as i32,
            flags = out(reg) flags,
            inlateout("rax") fluke_abi::syscall::FLOOR_SWITCH => ret,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    (ret == 0, flags & RFLAGS_NT != 0)
}

/// Where the `seg-*` cases' parent points their FS and GS bases (ktest sets both to it).
const SEGMENT_PAGE: u64 = 0x5000_0000;
/// What `fs:[0]` and `gs:[8]` read through those bases.
const SEGMENT_MARKS: (u64, u64) = (0xf5_f5f5, 0x65_6565);

/// Maps [`SEGMENT_PAGE`] and writes [`SEGMENT_MARKS`] into it; false if it cannot be mapped.
fn map_segment_page() -> bool {
    if sys::map_anon(SEGMENT_PAGE, 4096).is_err() {
        return false;
    }
    // SAFETY: the page was just mapped writable in our own space.
    unsafe {
        core::ptr::write_volatile(SEGMENT_PAGE as *mut u64, SEGMENT_MARKS.0);
        core::ptr::write_volatile((SEGMENT_PAGE + 8) as *mut u64, SEGMENT_MARKS.1);
    }
    true
}

/// `fs:[0]` and `gs:[8]`. Through a wrong base these fault (nothing is mapped at 0) or
/// read something else.
fn read_through_segments() -> (u64, u64) {
    let (fs, gs): (u64, u64);
    // SAFETY: loads only; a bad base is the fault under test, and the kernel ends us at it.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) fs, options(nostack, readonly));
        asm!("mov {}, qword ptr gs:[8]", out(reg) gs, options(nostack, readonly));
    }
    (fs, gs)
}

/// XCR0, read with XGETBV (#UD natively, where the kernel leaves OSXSAVE off).
fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV only reads; where it is not enabled it faults and the kernel kills us.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The vector state above SSE: the upper halves of ymm0-15, with AVX-512 zmm16-31 and k0-7.
#[derive(Default)]
struct VectorState {
    ymm_upper: [[u64; 2]; 16],
    zmm_high: [[u64; 8]; 16],
    k: [u64; 8],
}

/// Reads [`VectorState`] without changing a register (AVX must be enabled).
fn vector_state(avx512: bool) -> VectorState {
    let mut v = VectorState::default();
    macro_rules! upper {
        ($($n:literal),*) => {$(
            // SAFETY: VEXTRACTF128 stores 16 bytes into our array.
            unsafe { asm!(concat!("vextractf128 xmmword ptr [{}], ymm", $n, ", 1"),
                in(reg) v.ymm_upper[$n].as_mut_ptr(), options(nostack)) };
        )*};
    }
    upper!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    if avx512 {
        macro_rules! high {
            ($($i:literal $n:literal),*) => {$(
                // SAFETY: VMOVDQU64 stores 64 bytes into our array.
                unsafe { asm!(concat!("vmovdqu64 zmmword ptr [{}], zmm", $n),
                    in(reg) v.zmm_high[$i].as_mut_ptr(), options(nostack)) };
            )*};
        }
        high!(0 16, 1 17, 2 18, 3 19, 4 20, 5 21, 6 22, 7 23, 8 24, 9 25, 10 26, 11 27, 12 28,
            13 29, 14 30, 15 31);
        macro_rules! kreg {
            ($($n:literal),*) => {$(
                // SAFETY: KMOVW stores 2 bytes into our u64.
                unsafe { asm!(concat!("kmovw word ptr [{}], k", $n),
                    in(reg) &mut v.k[$n] as *mut u64, options(nostack)) };
            )*};
        }
        kreg!(0, 1, 2, 3, 4, 5, 6, 7);
    }
    v
}

/// This thread's x87/SSE registers, as FXSAVE writes them.
fn fxsave() -> FxArea {
    let mut area = FxArea([0; 512]);
    // SAFETY: FXSAVE writes 512 bytes to a 16-byte-aligned buffer of that size.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
    area
}

/// Where the device-memory cases map a window.
const DEVMEM_VA: u64 = 0x7000_0000;

/// A program holding no device capability tries every name with every device call and
/// finds nothing to reach a device through (`ktest devmem`); its parent then has it touch
/// the device's physical address as a virtual one and through the kernel's direct map.
fn devmem_nocap() -> i32 {
    use fluke_abi::syscall::objstate::{DEVICE_MEMORY, INTERRUPT};
    use fluke_abi::syscall::{Error, SELF_SPACE};
    let mut reached = 0;
    for name in (0..=300u64).chain([u64::MAX, u64::MAX - 2, 1 << 32]) {
        let map = sys::devmem_map(name, SELF_SPACE, DEVMEM_VA, true);
        let bind = sys::irq_bind(name, name);
        let ack = sys::irq_ack(name);
        let kind = sys::obj_get_state(name).map(|w| w[0]);
        let refused = |r: Result<u64, Error>| matches!(r, Err(Error::BadCap | Error::WrongType));
        if !refused(map)
            || !refused(bind)
            || !refused(ack)
            || matches!(kind, Ok(DEVICE_MEMORY | INTERRUPT))
        {
            println!("victim: devmem-nocap: name {name}: map {map:?} bind {bind:?} ack {ack:?} state {kind:?}");
            reached += 1;
        }
    }
    println!("victim: devmem-nocap: {reached} name(s) reached a device");
    i32::from(reached != 0)
}
