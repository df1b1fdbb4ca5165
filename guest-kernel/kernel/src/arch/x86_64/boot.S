/*
 * PVH entry: fluke-vmm and QEMU both enter here in 32-bit protected mode, paging off,
 * %ebx = physical address of hvm_start_info. On kvm_pvm this code is emulated (~1 µs per
 * instruction), so it does the least possible: the boot page tables are static data, the
 * code only loads them and jumps to 64-bit mode in the upper half.
 *
 * Boot page tables: the first GiB identity-mapped (for the jump) and at KERNEL_VIRT_BASE,
 * 2 MiB pages, U=1 (required on kvm_pvm once the kernel runs natively; harmless without
 * SMEP on hardware). The kernel replaces them with its own tables in paging::init.
 */
.set KVB, 0xffffffff80000000

    .section .note.Xen, "a"
    .p2align 2
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32 - KVB

    .section .text.boot, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                  /* start info, kept for kernel_main */
    lgdt (boot_gdtr - KVB)
    mov $0x18, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $(boot_pml4 - KVB), %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80010021, %eax            /* PG | WP | NE | PE: WP also keeps kvm_pvm from looping on user write faults */
    mov %eax, %cr0
    ljmp $0x10, $(boot_entry64_low - KVB)

    .code64
boot_entry64_low:
    movabs $boot_entry64, %rax
    jmp *%rax

boot_entry64:
    mov $0x18, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea boot_stack_top(%rip), %rsp
    mov %esi, %edi                  /* zero-extends: start info physical address */
    xor %ebp, %ebp
    call kernel_main
1:  hlt
    jmp 1b

    .section .data.boot, "aw"
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x10: 64-bit kernel code */
    .quad 0x00cf92000000ffff        /* 0x18: kernel data */
boot_gdt_end:
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt - KVB

    .p2align 12
boot_pml4:
    .quad boot_pdpt_low - KVB + 0x7
    .fill 510, 8, 0
    .quad boot_pdpt_high - KVB + 0x7
boot_pdpt_low:
    .quad boot_pd - KVB + 0x7
    .fill 511, 8, 0
boot_pdpt_high:
    .fill 510, 8, 0
    .quad boot_pd - KVB + 0x7
    .quad 0
boot_pd:
    .set i, 0
    .rept 512
    .quad (i << 21) + 0x87          /* P | RW | U | PS */
    .set i, i + 1
    .endr

    .section .bss
    .p2align 12
boot_stack:
    .skip 16 * 4096
    .globl boot_stack_top
boot_stack_top:
