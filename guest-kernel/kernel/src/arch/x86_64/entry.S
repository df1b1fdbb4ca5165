/*
 * Kernel entry and exit.
 *
 * Every IDT gate is an interrupt gate on an IST stack (kvm_pvm delivers events only onto
 * upper-half stacks, and between "VIF = 1" and SYSRETQ RSP holds the user's stack: pvm.md
 * §4.3). Each stub pushes a dummy error code where the CPU pushes none, then the vector, so
 * every frame has the TrapFrame layout (trap.rs).
 *
 * User mode is entered only by SYSRETQ (return_to_user), on both backends: on kvm_pvm it is
 * the only return the host tracks (pvm.md §4.3 rule 4, §11 H1), and using it natively too
 * gives one exit path. A return that must restore RCX and R11 goes through the return stub
 * in the space's read-only return page (§11 H2).
 *
 * PERCPU offsets (percpu.rs, checked there by const assertions).
 */
.set PC_CUR_REGS,     0
.set PC_KSTACK,       8
.set PC_USER_RSP,     16
.set PC_RET_RIP,      24
.set PC_RET_RFLAGS,   32
.set PC_RET_RSP,      40
.set PC_IDLE_STACK,   48
.set PC_CUR_THREAD,   56
.set PC_FLOOR_ACTIVE, 64
.set PC_FLOOR_CUR,    72
.set PC_FLOOR_REGS,   80      /* [2] */
.set PC_FLOOR_ROOT,   96      /* [2] */
.set PC_FLOOR_KSTACK, 112     /* [2] */
.set PC_FLOOR_THREAD, 128     /* [2] */
.set PC_CUR_ROOT,     144
.set PC_CUR_FPU,      152
.set PC_FLOOR_FPU,    160     /* [2] */
.set PC_FLOORS_ON,    176
.set PC_PV,           184
.set PC_XSAVE_MASK,   192
/* UserRegs offsets (the push order below) */
.set UR_END_OF_RSP,   144
.set UR_RIP,          120
.set UR_RFLAGS,       128
.set UR_RSP,          136
.set UR_RAX,          112
.set UR_FS_BASE,      144
.set UR_GS_BASE,      152
.set MSR_FS_BASE,     0xc0000100
.set MSR_GS_BASE,     0xc0000101
.set MSR_KERNEL_GS_BASE, 0xc0000102
/* RFLAGS bits user code may hold (user.rs USER_RFLAGS_MASK), and those always set */
.set USER_RFLAGS_MASK, 0x240dd5
.set USER_RFLAGS_SET,  0x202
.set FLOOR_SYSCALL,   0xf100
.set FLOOR_SWITCH,    0xf101
/* A call's result for Error::PeerGone (fluke_abi; asserted in kernel/floor.rs) */
.set ERR_PEER_GONE,   -11

    .section .text
    .p2align 4
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .p2align 4
    .if (vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30)
    pushq $vec
    .else
    pushq $0
    pushq $vec
    .endif
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
    cld                             /* pvm.md §11 H4: DF from user survives delivery */
    pushq $2                        /* and AC: event delivery keeps it, and AC=1 would */
    popfq                           /* turn SMAP off in the kernel (IF is 0 here already) */
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    testb $3, 144(%rsp)             /* CS of the interrupted context */
    jnz 1f
    mov %rsp, %rdi
    call trap_dispatch              /* kernel-mode event (arch): fixups, checks; what it was */
    mov %rax, %rdi
    mov %rsp, %rsi
    call kernel_event               /* the kernel's part (an interrupt): returns here */
    mov %rsp, %rdi
    call trap_return_check          /* the frame returns to kernel text, or the VM stops */
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp                   /* vector, error code */
    /* The kernel's only IRETQ: trap_dispatch has checked that the frame returns to kernel
       mode, to kernel text (pvm.md §11 H1). */
    iretq
1:  /* From user mode: continue on the current thread's kernel stack; user_trap copies the
       frame off the IST stack first and leaves by return_to_user. */
    mov %rsp, %rdi
    mov PERCPU+PC_KSTACK(%rip), %rsp
    call user_trap                  /* saves the registers; returns vector, error code */
    mov %rax, %rdi
    mov %rdx, %rsi
    call user_event                 /* dispatch: handles it, leaves by return_to_user */
    ud2

/*
 * SYSCALL entry. RCX = user RIP, R11 = user RFLAGS, RSP = user RSP. Natively SFMASK has
 * cleared IF; on kvm_pvm VIF is still 1, so it is cleared first (an IRQ arriving before that
 * is a kernel-mode event on the IST stack and returns here).
 */
/* Saves a SYSCALL's user registers into the current thread's UserRegs (filled from its
   end, by pushing) and moves to the thread's kernel stack. */
.macro SAVE_SYSCALL_FRAME
    movb $0, PV_PAGE(%rip)          /* VIF = 0 (kvm_pvm); an unused byte natively */
    cld
    mov %rsp, PERCPU+PC_USER_RSP(%rip)
    mov PERCPU+PC_CUR_REGS(%rip), %rsp
    add $UR_END_OF_RSP, %rsp
    pushq PERCPU+PC_USER_RSP(%rip)
    push %r11
    push %rcx
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov PERCPU+PC_KSTACK(%rip), %rsp
    xor %ebp, %ebp
.endm

    .p2align 4
    .globl syscall_entry
syscall_entry:
    cmp $FLOOR_SYSCALL, %rax
    je floor_syscall
    cmp $FLOOR_SWITCH, %rax
    je floor_switch
syscall_normal:
    SAVE_SYSCALL_FRAME
    call syscall_dispatch
    ud2

/*
 * SYSCALL from compatibility mode (CSTAR). 32-bit code has no kernel calls: the call is
 * refused as a general-protection fault of the thread. Natively the CPU is now in ring 0 on
 * the user's stack with IF, TF, DF and AC cleared by SFMASK; nothing touches that stack.
 * (CSTAR was 0 before: the CPU ran whatever a program had mapped at address 0 in ring 0.)
 */
    .p2align 4
    .globl syscall_compat_entry
syscall_compat_entry:
    SAVE_SYSCALL_FRAME
    call compat_syscall_refused
    ud2

/* Jumps to \bad unless RSP is canonical (bits 63..47 all equal). Clobbers RAX. The floor
   paths return to user mode without the dispatcher, which makes a thread with a
   non-canonical RSP take a stack fault instead (dispatch/fault.rs: kvm_pvm emulates such
   user code, with the guest's interrupts held off), so they check it themselves: such a
   caller goes the normal way, where the call is refused as that fault. */
.macro RSP_CANONICAL_OR bad
    mov %rsp, %rax
    sar $47, %rax                   /* 0 or -1 if canonical */
    add $1, %rax                    /* 1 or 0 */
    cmp $1, %rax
    ja \bad
.endm

/* platform.syscall_floor: the bare entry and return, no dispatch. RCX and R11 are what
   SYSCALL wrote (the caller's RIP and RFLAGS), so SYSRETQ returns with nothing changed. */
floor_syscall:
    cmpq $0, PERCPU+PC_FLOORS_ON(%rip)
    je syscall_normal               /* rax still FLOOR_SYSCALL: an unknown call */
    RSP_CANONICAL_OR floor_syscall_bad_rsp
    xor %eax, %eax
    sysretq
floor_syscall_bad_rsp:
    mov $FLOOR_SYSCALL, %eax
    jmp syscall_normal
floor_switch_bad_rsp:
    mov $FLOOR_SWITCH, %eax
    jmp syscall_normal

/* Saves the FPU/SSE/AVX registers into the area at RCX (fpu.rs: XSAVE with the switched
   components on kvm_pvm, FXSAVE natively), and restores them from it. Clobber RAX, RDX. */
.macro FPU_SAVE
    mov PERCPU+PC_XSAVE_MASK(%rip), %rax
    test %rax, %rax
    jz 91f
    mov %rax, %rdx
    shr $32, %rdx
    xsave64 (%rcx)
    jmp 92f
91: fxsave64 (%rcx)
92:
.endm
.macro FPU_RESTORE
    mov PERCPU+PC_XSAVE_MASK(%rip), %rax
    test %rax, %rax
    jz 91f
    mov %rax, %rdx
    shr $32, %rdx
    xrstor64 (%rcx)
    jmp 92f
91: fxrstor64 (%rcx)
92:
.endm

/* platform.switch_floor: the bare switch between the two threads of the registered pair.
   It is a real switch, only without the scheduler: every user register of the thread that
   leaves is saved (as a kernel call saves them: the call returns 0 when the partner
   switches back, PeerGone if the pair ends first and the scheduler resumes it), the
   FPU/SSE/AVX state and the FS and GS bases are switched (as kernel/sched.rs switch_to does),
   and every register of the thread that comes in is restored, its RFLAGS sanitised.
   Only a pair member that entered by SYSCALL is ever resumed here (floor_join and the
   scheduler keep it so), so its RCX and R11 are its RIP and RFLAGS and one SYSRETQ
   returns it. */
floor_switch:
    cmpq $0, PERCPU+PC_FLOOR_ACTIVE(%rip)
    je syscall_normal               /* rax still FLOOR_SWITCH: an unknown call */
    /* The partner coming in entered by SYSCALL too (here, or its join through the
       dispatcher), so its saved RSP was checked the same way. */
    RSP_CANONICAL_OR floor_switch_bad_rsp
    mov %rdx, PERCPU+PC_USER_RSP(%rip)  /* scratch, restored below if not a member */
    mov PERCPU+PC_FLOOR_CUR(%rip), %rax
    lea PERCPU(%rip), %rdx
    mov PC_FLOOR_REGS(%rdx,%rax,8), %rdx
    cmp PERCPU+PC_CUR_REGS(%rip), %rdx
    je 1f
    mov PERCPU+PC_USER_RSP(%rip), %rdx
    mov $FLOOR_SWITCH, %eax
    jmp syscall_normal              /* not a member of the pair: an unknown call */
1:  mov PERCPU+PC_USER_RSP(%rip), %rdx
    mov $ERR_PEER_GONE, %rax        /* the result if the scheduler resumes it instead: */
    SAVE_SYSCALL_FRAME              /* PeerGone (the pair ended); every register is free */
    mov PERCPU+PC_CUR_FPU(%rip), %rcx
    FPU_SAVE
    mov PERCPU+PC_CUR_REGS(%rip), %rsi  /* the leaving thread's registers */
    cmpq $0, PERCPU+PC_PV(%rip)
    je 2f
    rdfsbase %rax                   /* kvm_pvm: user code may have changed both bases */
    mov %rax, UR_FS_BASE(%rsi)
    mov $MSR_KERNEL_GS_BASE, %ecx   /* the user GS base (user.rs switch_segment_bases) */
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, UR_GS_BASE(%rsi)
2:  mov PERCPU+PC_FLOOR_CUR(%rip), %rax
    xor $1, %rax
    mov %rax, PERCPU+PC_FLOOR_CUR(%rip)
    lea PERCPU(%rip), %rdx
    mov PC_FLOOR_ROOT(%rdx,%rax,8), %rcx
    mov %rcx, %cr3
    mov %rcx, PERCPU+PC_CUR_ROOT(%rip)
    mov PC_FLOOR_KSTACK(%rdx,%rax,8), %rcx
    mov %rcx, PERCPU+PC_KSTACK(%rip)
    mov PC_FLOOR_THREAD(%rdx,%rax,8), %rcx
    mov %rcx, PERCPU+PC_CUR_THREAD(%rip)
    mov PC_FLOOR_REGS(%rdx,%rax,8), %rdi  /* the entering thread's registers */
    mov %rdi, PERCPU+PC_CUR_REGS(%rip)
    movq $0, UR_RAX(%rdi)           /* its floor switch or join returns 0 */
    mov PC_FLOOR_FPU(%rdx,%rax,8), %rcx
    mov %rcx, PERCPU+PC_CUR_FPU(%rip)
    FPU_RESTORE
    /* Segment bases: the leaving thread's saved ones are the loaded ones now (read back
       above on kvm_pvm; natively user code cannot change them), so only a difference is
       written. kvm_pvm: FS by WRFSBASE, GS by MSR_KERNEL_GS_BASE; natively both by MSR. */
    mov $MSR_KERNEL_GS_BASE, %ecx
    cmpq $0, PERCPU+PC_PV(%rip)
    je 4f
    mov UR_FS_BASE(%rdi), %rax
    wrfsbase %rax
    jmp 5f
4:  mov UR_FS_BASE(%rdi), %rax     /* natively a selector load may have reset them */
    mov $MSR_FS_BASE, %ecx
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    mov UR_GS_BASE(%rdi), %rax
    mov $MSR_GS_BASE, %ecx
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    jmp 7f
5:  mov UR_GS_BASE(%rdi), %rax
    cmp UR_GS_BASE(%rsi), %rax
    je 7f
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
7:  mov %rdi, %rdx
    mov UR_RIP(%rdx), %rcx
    mov %rcx, PERCPU+PC_RET_RIP(%rip)
    mov UR_RFLAGS(%rdx), %rcx
    and $USER_RFLAGS_MASK, %rcx
    or $USER_RFLAGS_SET, %rcx
    mov %rcx, PERCPU+PC_RET_RFLAGS(%rip)
    mov UR_RSP(%rdx), %rcx
    mov %rcx, PERCPU+PC_RET_RSP(%rip)
    jmp return_to_user_asm

/*
 * return_to_user: restores the current thread's UserRegs, except that RCX, R11 and RSP come
 * from PERCPU.ret_* (prepared by user::return_to_user: either the thread's own RIP/RFLAGS/RSP,
 * or the return stub's address when RCX/R11 must be restored too). Never returns.
 */
    .p2align 4
    .globl return_to_user_asm
return_to_user_asm:
    mov PERCPU+PC_CUR_REGS(%rip), %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    add $8, %rsp                    /* r11: from ret_rflags */
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    add $8, %rsp                    /* rcx: from ret_rip */
    pop %rbx
    pop %rax
    mov PERCPU+PC_RET_RIP(%rip), %rcx
    mov PERCPU+PC_RET_RFLAGS(%rip), %r11
    /* VIF = 1 while RSP is still a kernel address (pvm.md §4.3 rule 5); an IRQ injected in
       the window is a kernel-mode event on the IST stack and returns here. */
    movb $1, PV_PAGE(%rip)
    mov PERCPU+PC_RET_RSP(%rip), %rsp
    sysretq

/* Switches to the idle stack and calls the scheduler (dispatch), which never returns. */
    .globl schedule
schedule:
    mov PERCPU+PC_IDLE_STACK(%rip), %rsp
    xor %ebp, %ebp
    call schedule_on_idle_stack
    ud2

/*
 * The return page: a template copied into each space's return page, which is mapped
 * user-readable and executable (never writable) at RETURN_PAGE. The kernel writes the slot
 * through the direct map before a SYSRETQ to the stub. RIP-relative loads keep the stub
 * independent of any register the user controls (pvm.md §11 H2).
 */
    .section .rodata.return_page, "a"
    .p2align 12
    .globl return_page_template
return_page_template:
ret_slot_rcx:   .quad 0
ret_slot_r11:   .quad 0
ret_slot_rsp:   .quad 0
ret_slot_rip:   .quad 0
    .p2align 6
    .globl return_stub_start
return_stub_start:
    mov ret_slot_rcx(%rip), %rcx
    mov ret_slot_r11(%rip), %r11
    mov ret_slot_rsp(%rip), %rsp
    jmp *ret_slot_rip(%rip)
    .globl return_stub_end
return_stub_end:
    .p2align 12
