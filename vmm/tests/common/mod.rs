//! Test guests built in the test itself: a few hand-assembled bytes of 32-bit code in a
//! minimal kernel ELF with a PVH note, plus a one-program bundle, packed with
//! `fluke_image::image::build_image`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fluke_abi::boot::{KERNEL_PHYS_LOAD, KERNEL_VIRT_BASE, XEN_ELFNOTE_PHYS32_ENTRY};

/// Physical load (and PVH entry) address of the test kernel's code.
pub const CODE_PADDR: u64 = KERNEL_PHYS_LOAD;
/// Physical address of the optional data segment (readable/writable, not executable).
pub const DATA_PADDR: u64 = KERNEL_PHYS_LOAD + 0x1000;

/// 32-bit machine code snippets (encoded by hand).
pub mod asm {
    /// `mov $imm8, %al`
    pub fn mov_al(v: u8) -> Vec<u8> {
        vec![0xb0, v]
    }
    /// `mov $imm16, %dx`
    pub fn mov_dx(port: u16) -> Vec<u8> {
        let [lo, hi] = port.to_le_bytes();
        vec![0x66, 0xba, lo, hi]
    }
    /// `out %al, (%dx)`
    pub const OUT_DX_AL: u8 = 0xee;
    /// `in (%dx), %al`
    pub const IN_AL_DX: u8 = 0xec;
    /// `out %al, $imm8`
    pub fn out_imm(port: u8) -> Vec<u8> {
        vec![0xe6, port]
    }
    /// `out %al, (%dx)` of `value` to `port`
    pub fn out_dx(port: u16, value: u8) -> Vec<u8> {
        [mov_dx(port), mov_al(value), vec![OUT_DX_AL]].concat()
    }
    /// `mov $v, %al; out %al, $0xf4; hlt`
    pub fn exit(v: u8) -> Vec<u8> {
        [mov_al(v), out_imm(0xf4), vec![HLT]].concat()
    }
    pub const HLT: u8 = 0xf4;
    /// `jmp .`
    pub const SPIN: [u8; 2] = [0xeb, 0xfe];
    /// `ud2`
    pub const UD2: [u8; 2] = [0x0f, 0x0b];
    /// `movl $imm, abs32` (a 32-bit store to a physical address: paging is off)
    pub fn store32(addr: u32, imm: u32) -> Vec<u8> {
        let mut v = vec![0xc7, 0x05];
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&imm.to_le_bytes());
        v
    }
    /// `mov abs32, %eax`
    pub fn load32(addr: u32) -> Vec<u8> {
        let mut v = vec![0xa1];
        v.extend_from_slice(&addr.to_le_bytes());
        v
    }
    /// `movzwl abs32, %eax`
    pub fn load16(addr: u32) -> Vec<u8> {
        let mut v = vec![0x0f, 0xb7, 0x05];
        v.extend_from_slice(&addr.to_le_bytes());
        v
    }
    /// `movzbl abs32, %eax`
    pub fn load8(addr: u32) -> Vec<u8> {
        let mut v = vec![0x0f, 0xb6, 0x05];
        v.extend_from_slice(&addr.to_le_bytes());
        v
    }
    /// `cmp $imm, %eax; je 1f; <exit(code)>; 1:` — exits with `code` unless EAX is `imm`.
    pub fn expect_eax(imm: u32, code: u8) -> Vec<u8> {
        let fail = exit(code);
        let mut v = vec![0x3d];
        v.extend_from_slice(&imm.to_le_bytes());
        v.extend_from_slice(&[0x74, fail.len() as u8]);
        v.extend(fail);
        v
    }
    /// `1: movzwl abs32, %eax; cmp $imm, %eax; jne 1b` — spins until the u16 at `addr` is `imm`.
    pub fn wait16(addr: u32, imm: u32) -> Vec<u8> {
        let mut v = load16(addr);
        v.push(0x3d);
        v.extend_from_slice(&imm.to_le_bytes());
        let back = -(v.len() as i8 + 2);
        v.extend_from_slice(&[0x75, back as u8]);
        v
    }
    /// `sti`
    pub const STI: u8 = 0xfb;
    /// `lidt abs32`
    pub fn lidt(addr: u32) -> Vec<u8> {
        let mut v = vec![0x0f, 0x01, 0x1d];
        v.extend_from_slice(&addr.to_le_bytes());
        v
    }
    /// Where the hand-built guests that take device interrupts keep their IDT and IDTR, and
    /// the vector they route a device's line to.
    pub const IDT: u32 = 0x20_4000;
    pub const IDTR: u32 = 0x20_5000;
    pub const DEVICE_VECTOR: u32 = 0x30;

    /// Enables the LAPIC, routes IOAPIC input `line` to [`DEVICE_VECTOR`] on APIC 0 (edge,
    /// unmasked) and points the IDT's gate for it at `handler`. The PIC is left as the VMM
    /// hands it over (masked: else the line would also arrive as an exception vector, which
    /// has no gate here, and the guest would triple-fault).
    pub fn route_interrupt(line: u32, handler: u32) -> Vec<u8> {
        let gate = IDT + DEVICE_VECTOR * 8;
        [
            vec![0xbc, 0x00, 0x00, 0x30, 0x00], // mov $0x300000, %esp: the frame goes there
            store32(0xfee0_00f0, 0x1ff),
            store32(0xfec0_0000, 0x10 + 2 * line),
            store32(0xfec0_0010, DEVICE_VECTOR),
            store32(0xfec0_0000, 0x10 + 2 * line + 1),
            store32(0xfec0_0010, 0),
            store32(gate, (0x10 << 16) | (handler & 0xffff)),
            store32(gate + 4, (handler & 0xffff_0000) | 0x8e00),
            store32(IDTR, ((IDT & 0xffff) << 16) | (DEVICE_VECTOR * 8 + 7)),
            store32(IDTR + 4, IDT >> 16),
            lidt(IDTR),
        ]
        .concat()
    }

    /// `mov $addr, %eax; jmp *%eax`
    pub fn jmp_abs(addr: u32) -> Vec<u8> {
        let mut v = vec![0xb8];
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&[0xff, 0xe0]);
        v
    }
}

fn push_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn push_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

struct Seg {
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// A minimal ET_EXEC x86-64 kernel: `code` at [`CODE_PADDR`] (linked in the upper half like
/// the real kernel, executed at its physical address by the PVH entry), an optional
/// non-executable `data` segment at [`DATA_PADDR`] with `data_memsz` bytes in memory, and a
/// `"Xen"` note of type 18 whose descriptor is the entry point.
pub fn kernel_elf(code: &[u8], data: Option<(&[u8], u64)>) -> Vec<u8> {
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    let code_off = 0x1000u64;
    let data_off = 0x2000u64;
    let note_off = 0x200u64;
    let mut note = Vec::new();
    push_u32(&mut note, 4); // namesz
    push_u32(&mut note, 4); // descsz
    push_u32(&mut note, XEN_ELFNOTE_PHYS32_ENTRY);
    note.extend_from_slice(b"Xen\0");
    push_u32(&mut note, CODE_PADDR as u32);

    let mut segs = vec![Seg {
        p_type: PT_LOAD,
        flags: 4 | 1, // R X
        offset: code_off,
        paddr: CODE_PADDR,
        vaddr: KERNEL_VIRT_BASE + CODE_PADDR,
        filesz: code.len() as u64,
        memsz: code.len() as u64,
        align: 0x1000,
    }];
    if let Some((bytes, memsz)) = data {
        segs.push(Seg {
            p_type: PT_LOAD,
            flags: 4 | 2, // R W
            offset: data_off,
            paddr: DATA_PADDR,
            vaddr: KERNEL_VIRT_BASE + DATA_PADDR,
            filesz: bytes.len() as u64,
            memsz: memsz.max(bytes.len() as u64),
            align: 0x1000,
        });
    }
    segs.push(Seg {
        p_type: PT_NOTE,
        flags: 4,
        offset: note_off,
        paddr: 0,
        vaddr: 0,
        filesz: note.len() as u64,
        memsz: note.len() as u64,
        align: 4,
    });

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    f.extend_from_slice(&[0; 8]);
    push_u16(&mut f, 2); // ET_EXEC
    push_u16(&mut f, 62); // EM_X86_64
    push_u32(&mut f, 1);
    push_u64(&mut f, KERNEL_VIRT_BASE + CODE_PADDR); // e_entry
    push_u64(&mut f, 64); // e_phoff
    push_u64(&mut f, 0); // e_shoff
    push_u32(&mut f, 0); // e_flags
    push_u16(&mut f, 64); // e_ehsize
    push_u16(&mut f, 56); // e_phentsize
    push_u16(&mut f, segs.len() as u16);
    push_u16(&mut f, 64); // e_shentsize
    push_u16(&mut f, 0); // e_shnum
    push_u16(&mut f, 0); // e_shstrndx
    for s in &segs {
        push_u32(&mut f, s.p_type);
        push_u32(&mut f, s.flags);
        push_u64(&mut f, s.offset);
        push_u64(&mut f, s.vaddr);
        push_u64(&mut f, s.paddr);
        push_u64(&mut f, s.filesz);
        push_u64(&mut f, s.memsz);
        push_u64(&mut f, s.align);
    }
    let place = |f: &mut Vec<u8>, off: u64, bytes: &[u8]| {
        let off = off as usize;
        if f.len() < off + bytes.len() {
            f.resize(off + bytes.len(), 0);
        }
        f[off..off + bytes.len()].copy_from_slice(bytes);
    };
    place(&mut f, note_off, &note);
    place(&mut f, code_off, code);
    if let Some((bytes, _)) = data {
        place(&mut f, data_off, bytes);
    }
    f
}

/// A bundle with one small program ("hello", not an ELF) and the manifest `init hello`.
pub fn bundle() -> Vec<u8> {
    fluke_image::bundle::BundleBuilder::new()
        .add_program("hello", b"hello program bytes")
        .expect("add_program")
        .manifest("init hello")
        .build()
        .expect("bundle")
}

/// A complete image around `code`.
pub fn image(code: &[u8]) -> Vec<u8> {
    image_with_data(code, None)
}

pub fn image_with_data(code: &[u8], data: Option<(&[u8], u64)>) -> Vec<u8> {
    fluke_image::image::build_image(&kernel_elf(code, data), &bundle()).expect("build_image")
}

/// A scratch directory for one test, removed when the test passes (kept for a look when it
/// fails).
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn temp_dir(test: &str) -> TestDir {
    let d = std::env::temp_dir().join(format!("fluke-vmm-test-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    TestDir(d)
}

/// An image file in its own scratch directory.
pub struct TestImage {
    dir: TestDir,
    path: PathBuf,
}

impl TestImage {
    /// The image's scratch directory, for other files of the test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl std::ops::Deref for TestImage {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TestImage {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// Runs `img` with each case's arguments and checks the VMM refuses it before the guest
/// runs, with one line (status 126) that contains the case's text.
pub fn assert_each_refused_with_one_line<S: AsRef<str>>(img: &Path, cases: &[(Vec<String>, S)]) {
    for (args, says) in cases {
        let says = says.as_ref();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(img, &args);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(fluke_abi::status::VMM_ERROR),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("fluke-vmm: error: "), "{err}");
        assert!(err.contains(says), "{args:?}: want {says:?} in {err}");
    }
}

/// Writes `image` into a scratch directory for `test`.
pub fn write_image(test: &str, image: &[u8]) -> TestImage {
    let dir = temp_dir(test);
    let path = dir.join("guest.img");
    std::fs::write(&path, image).expect("write image");
    TestImage { dir, path }
}

pub fn vmm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fluke-vmm"));
    c.stdin(Stdio::null());
    c
}

/// The `--timeout` a test's run gets unless it gives its own: nothing in CI hangs longer.
pub const DEFAULT_TIMEOUT_SECS: &str = "60";

/// `fluke-vmm run IMAGE --memory 16 ARGS...` (with `--timeout 60` unless ARGS has one).
pub fn run(image: &Path, args: &[&str]) -> Output {
    let mut c = vmm();
    c.arg("run").arg(image).args(["--memory", "16"]).args(args);
    if !args.contains(&"--timeout") {
        c.args(["--timeout", DEFAULT_TIMEOUT_SECS]);
    }
    c.output().expect("spawn fluke-vmm")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the run ended as a guest crash whose report says `reason`; returns the
/// report (stderr) for further checks.
#[track_caller]
pub fn assert_guest_crash(o: &Output, reason: &str) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(fluke_abi::status::VMM_GUEST_CRASH),
        "stderr: {err}"
    );
    assert!(err.contains(reason), "no {reason:?} in: {err}");
    err
}
