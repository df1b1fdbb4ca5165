//! The little x86 decoding the kvm_pvm breakpoints need (with iced-x86): how long the
//! instruction at an address is, and where the instruction at RIP can go next.
//!
//! On kvm_pvm neither int3 nor the trap flag reach the VMM once the kernel runs in PV mode
//! (vmm/README.md, "gdb on kvm_pvm"), so a breakpoint there is a 2-byte
//! `out %al, $BREAKPOINT_PORT` written over the first two bytes of an instruction at least
//! two bytes long (never into the next instruction, which a jump could enter), and a
//! single step is such breakpoints put at every address the instruction can continue at.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};
use kvm_bindings::kvm_regs;

/// Why an instruction cannot be stepped over by breakpoints at its successors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("the code at {0:#x} cannot be decoded")]
    Undecodable(u64),
    #[error("{mnemonic} at {rip:#x} leaves the kernel's own flow (system call, return to user, interrupt or exception); single-step over it is not possible on kvm_pvm")]
    LeavesFlow { mnemonic: String, rip: u64 },
    #[error("the target of the indirect {mnemonic} at {rip:#x} cannot be worked out ({why})")]
    IndirectTarget {
        mnemonic: String,
        rip: u64,
        why: &'static str,
    },
}

fn decode(code: &[u8], bitness: u32, ip: u64) -> Option<Instruction> {
    let mut decoder = Decoder::with_ip(bitness, code, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    (!insn.is_invalid()).then_some(insn)
}

/// The length of the instruction at the start of `code` (decoded at `ip` in `bitness`-bit
/// mode), or None if it does not decode (or `code` ends inside it).
pub fn length(code: &[u8], bitness: u32, ip: u64) -> Option<usize> {
    decode(code, bitness, ip).map(|i| i.len())
}

/// Whether the 64-bit instruction at the start of `code` may change (any part of) RDX,
/// implicitly included (MUL, DIV, CQO, RDTSC, CPUID ...). None if it does not decode.
pub fn may_write_rdx(code: &[u8], ip: u64) -> Option<bool> {
    let insn = decode(code, 64, ip)?;
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&insn);
    Some(info.used_registers().iter().any(|u| {
        u.register().full_register() == Register::RDX
            && !matches!(
                u.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::None
            )
    }))
}

/// Every address the instruction at `regs.rip` (its bytes: `code`, 64-bit) can continue at
/// when it completes normally. `read_u64` reads guest-virtual memory (a return address, a
/// jump table slot). An interrupt or exception taken meanwhile is not a successor: it
/// returns to one of these.
pub fn successors(
    code: &[u8],
    regs: &kvm_regs,
    read_u64: &dyn Fn(u64) -> Option<u64>,
) -> Result<Vec<u64>, StepError> {
    let rip = regs.rip;
    let insn = decode(code, 64, rip).ok_or(StepError::Undecodable(rip))?;
    let next = insn.next_ip();
    let mnemonic = || format!("{:?}", insn.mnemonic()).to_lowercase();
    let indirect = |why| StepError::IndirectTarget {
        mnemonic: mnemonic(),
        rip,
        why,
    };
    let leaves = || StepError::LeavesFlow {
        mnemonic: mnemonic(),
        rip,
    };
    // SYSCALL counts as a call and SYSRET as a return: neither has a near target here.
    if matches!(
        insn.mnemonic(),
        Mnemonic::Syscall | Mnemonic::Sysret | Mnemonic::Sysenter | Mnemonic::Sysexit
    ) {
        return Err(leaves());
    }
    let near = matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    );
    match insn.flow_control() {
        // A REP string instruction is stepped over whole (a breakpoint on itself would stop
        // it before its first iteration).
        FlowControl::Next => Ok(vec![next]),
        FlowControl::UnconditionalBranch | FlowControl::Call if near => {
            Ok(vec![insn.near_branch_target()])
        }
        FlowControl::ConditionalBranch if near => Ok(vec![insn.near_branch_target(), next]),
        FlowControl::UnconditionalBranch | FlowControl::Call | FlowControl::ConditionalBranch => {
            Err(leaves())
        }
        FlowControl::Return if matches!(insn.mnemonic(), Mnemonic::Ret) => {
            let target = read_u64(regs.rsp).ok_or_else(|| indirect("the stack is not readable"))?;
            Ok(vec![target])
        }
        FlowControl::IndirectBranch | FlowControl::IndirectCall => {
            let target = match insn.op0_kind() {
                OpKind::Register => {
                    register_value(regs, insn.op0_register()).ok_or_else(|| indirect("register"))?
                }
                OpKind::Memory => {
                    let addr = memory_operand_address(&insn, regs).ok_or_else(|| {
                        indirect("its memory operand uses a segment base or an unusual register")
                    })?;
                    read_u64(addr).ok_or_else(|| indirect("its memory operand is not readable"))?
                }
                _ => return Err(indirect("a far branch")),
            };
            Ok(vec![target])
        }
        FlowControl::Return
        | FlowControl::Interrupt
        | FlowControl::XbeginXabortXend
        | FlowControl::Exception => Err(leaves()),
    }
}

/// The address of a 64-bit instruction's memory operand, or None where it needs what this
/// does not have (an FS or GS base, a vector index).
fn memory_operand_address(insn: &Instruction, regs: &kvm_regs) -> Option<u64> {
    if matches!(insn.memory_segment(), Register::FS | Register::GS) {
        return None;
    }
    if insn.is_ip_rel_memory_operand() {
        return Some(insn.ip_rel_memory_address());
    }
    let base = match insn.memory_base() {
        Register::None => 0,
        r => register_value(regs, r)?,
    };
    let index = match insn.memory_index() {
        Register::None => 0,
        r => register_value(regs, r)?.wrapping_mul(u64::from(insn.memory_index_scale())),
    };
    Some(
        base.wrapping_add(index)
            .wrapping_add(insn.memory_displacement64()),
    )
}

/// A 64-bit general register's value.
fn register_value(regs: &kvm_regs, r: Register) -> Option<u64> {
    Some(match r {
        Register::RAX => regs.rax,
        Register::RBX => regs.rbx,
        Register::RCX => regs.rcx,
        Register::RDX => regs.rdx,
        Register::RSI => regs.rsi,
        Register::RDI => regs.rdi,
        Register::RBP => regs.rbp,
        Register::RSP => regs.rsp,
        Register::R8 => regs.r8,
        Register::R9 => regs.r9,
        Register::R10 => regs.r10,
        Register::R11 => regs.r11,
        Register::R12 => regs.r12,
        Register::R13 => regs.r13,
        Register::R14 => regs.r14,
        Register::R15 => regs.r15,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RIP: u64 = 0xffff_ffff_8010_0000;

    fn regs() -> kvm_regs {
        kvm_regs {
            rip: RIP,
            rsp: 0xffff_ffff_8014_0000,
            rax: 0xffff_ffff_8011_1111,
            rbx: 0x10,
            ..Default::default()
        }
    }

    fn no_memory(_: u64) -> Option<u64> {
        None
    }

    #[test]
    fn lengths() {
        assert_eq!(length(&[0x55], 64, RIP), Some(1)); // push %rbp
        assert_eq!(length(&[0x48, 0x89, 0xe5], 64, RIP), Some(3)); // mov %rsp,%rbp
        assert_eq!(length(&[0x48, 0x89], 64, RIP), None); // cut short
        assert_eq!(length(&[0x89, 0xd8, 0x90], 32, 0x10_0000), Some(2)); // mov %ebx,%eax
    }

    #[test]
    fn writes_to_rdx_are_seen_explicit_or_implicit() {
        assert_eq!(may_write_rdx(&[0x48, 0x89, 0xe5], RIP), Some(false)); // mov %rsp,%rbp
        assert_eq!(may_write_rdx(&[0x48, 0x89, 0xd0], RIP), Some(false)); // mov %rdx,%rax
        assert_eq!(may_write_rdx(&[0x89, 0xc2], RIP), Some(true)); // mov %eax,%edx
        assert_eq!(may_write_rdx(&[0x5a], RIP), Some(true)); // pop %rdx
        assert_eq!(may_write_rdx(&[0x48, 0x99], RIP), Some(true)); // cqo
        assert_eq!(may_write_rdx(&[0x0f, 0x31], RIP), Some(true)); // rdtsc
        assert_eq!(may_write_rdx(&[0x48, 0xf7, 0xf1], RIP), Some(true)); // div %rcx
        assert_eq!(may_write_rdx(&[0xe8, 0, 1, 0, 0], RIP), Some(false)); // call
        assert_eq!(may_write_rdx(&[0x0f], RIP), None);
    }

    #[test]
    fn straight_line_and_direct_branches() {
        let r = regs();
        // mov %rsp,%rbp
        assert_eq!(
            successors(&[0x48, 0x89, 0xe5], &r, &no_memory),
            Ok(vec![RIP + 3])
        );
        // jmp .+0x10 (eb 0e)
        assert_eq!(
            successors(&[0xeb, 0x0e], &r, &no_memory),
            Ok(vec![RIP + 0x10])
        );
        // je .+0x10 (74 0e): taken and not taken
        assert_eq!(
            successors(&[0x74, 0x0e], &r, &no_memory),
            Ok(vec![RIP + 0x10, RIP + 2])
        );
        // call .+0x105 (e8 00 01 00 00)
        assert_eq!(
            successors(&[0xe8, 0x00, 0x01, 0x00, 0x00], &r, &no_memory),
            Ok(vec![RIP + 0x105])
        );
        // rep stosb: over it whole
        assert_eq!(successors(&[0xf3, 0xaa], &r, &no_memory), Ok(vec![RIP + 2]));
    }

    #[test]
    fn returns_and_indirect_branches_read_their_target() {
        let r = regs();
        let memory = |a: u64| match a {
            0xffff_ffff_8014_0000 => Some(0xffff_ffff_8010_2222),
            // jmp *0x20(%rax,%rbx,8)
            a if a == 0xffff_ffff_8011_1111 + 0x80 + 0x20 => Some(0xffff_ffff_8010_3333),
            _ => None,
        };
        assert_eq!(
            successors(&[0xc3], &r, &memory),
            Ok(vec![0xffff_ffff_8010_2222])
        );
        // call *%rax
        assert_eq!(
            successors(&[0xff, 0xd0], &r, &memory),
            Ok(vec![0xffff_ffff_8011_1111])
        );
        // jmp *0x20(%rax,%rbx,8) = ff 64 d8 20
        assert_eq!(
            successors(&[0xff, 0x64, 0xd8, 0x20], &r, &memory),
            Ok(vec![0xffff_ffff_8010_3333])
        );
        // call *%gs:0x10 = 65 ff 14 25 10 00 00 00
        assert!(matches!(
            successors(&[0x65, 0xff, 0x14, 0x25, 0x10, 0, 0, 0], &r, &memory),
            Err(StepError::IndirectTarget { .. })
        ));
        // ret with an unreadable stack
        assert!(successors(&[0xc3], &r, &no_memory).is_err());
    }

    #[test]
    fn leaving_the_kernels_flow_is_refused() {
        let r = regs();
        for code in [
            &[0x0f, 0x05][..],       // syscall
            &[0x48, 0x0f, 0x07][..], // sysretq
            &[0x48, 0xcf][..],       // iretq
            &[0xcc][..],             // int3
            &[0x0f, 0x0b][..],       // ud2
        ] {
            assert!(
                matches!(
                    successors(code, &r, &no_memory),
                    Err(StepError::LeavesFlow { .. })
                ),
                "{code:x?}"
            );
        }
        assert_eq!(
            successors(&[0x0f], &r, &no_memory),
            Err(StepError::Undecodable(RIP))
        );
    }
}
