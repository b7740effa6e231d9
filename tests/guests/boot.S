/*
 * Start-up code of pemu's test guests: a multiboot (v1) ELF kernel.
 *
 * The loader enters boot32 in flat 32-bit protected mode with EAX holding
 * the multiboot magic and EBX the information structure.  We load our own
 * GDT and IDT (every vector goes through one common stub that calls
 * guest_interrupt(vector)) and call guest_main(magic, info).
 *
 * ap_trampoline is the real-mode code an application processor starts at
 * after INIT/SIPI; the BSP copies it to AP_TRAMPOLINE_ADDR.
 */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003   /* page-align modules, memory info */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .code32
    .globl boot32
boot32:
    cli
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  movw $0x10, %cx
    movw %cx, %ds
    movw %cx, %es
    movw %cx, %ss
    movw %cx, %fs
    movw %cx, %gs
    movl $bsp_stack_top, %esp
    pushl %ebx
    pushl %eax
    call setup_idt
    lidt idt_desc
    call guest_main
    /* guest_main should not return: report failure through the debug port. */
    movw $0x501, %dx
    movb $0x7f, %al
    outb %al, %dx
2:  hlt
    jmp 2b

/* Fill the IDT with 32-bit interrupt gates to the stubs below. */
setup_idt:
    xorl %ecx, %ecx
1:  movl isr_table(,%ecx,4), %eax
    movw %ax, idt(,%ecx,8)
    movw $0x08, idt+2(,%ecx,8)
    movw $0x8E00, idt+4(,%ecx,8)
    shrl $16, %eax
    movw %ax, idt+6(,%ecx,8)
    incl %ecx
    cmpl $256, %ecx
    jne 1b
    ret

/* One stub per vector: push a dummy error code where the CPU pushes none. */
    .macro isr_stub vec
isr_\vec:
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17)
    .else
    pushl $0
    .endif
    pushl $\vec
    jmp isr_common
    .endm

    .altmacro
    .set vec, 0
    .rept 256
    isr_stub %vec
    .set vec, vec + 1
    .endr

isr_common:
    pusha
    pushl 32(%esp)            /* the vector */
    call guest_interrupt
    addl $4, %esp
    /*
     * Return without iret: KVM's instruction emulator (which runs guests on
     * software-only KVM hosts) handles iret in real mode only.  The frame
     * {eip, cs, eflags} above the error code becomes {eflags, eip} for
     * popfl + ret (same privilege level, same code segment).
     */
    movl 40(%esp), %eax       /* eip */
    movl 48(%esp), %ebx       /* eflags */
    movl %ebx, 44(%esp)
    movl %eax, 48(%esp)
    popa
    addl $12, %esp
    popfl
    ret

    .macro isr_addr vec
    .long isr_\vec
    .endm

    .section .rodata
    .align 4
isr_table:
    .set vec, 0
    .rept 256
    isr_addr %vec
    .set vec, vec + 1
    .endr

    .align 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF   /* 0x08: flat 32-bit code */
    .quad 0x00CF92000000FFFF   /* 0x10: flat 32-bit data */
gdt_end:
    .globl gdt_desc
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
idt_desc:
    .word 256 * 8 - 1
    .long idt

/* The AP's real-mode entry, copied to a page below 1 MiB (CS = page >> 4, IP = 0). */
    .text
    .code16
    .globl ap_trampoline, ap_trampoline_end
ap_trampoline:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (ap_gdt_desc - ap_trampoline)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .align 4
ap_gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
ap_trampoline_end:

    .code32
ap_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* Each AP takes the next stack slot. */
    movl $1, %eax
    lock xaddl %eax, ap_stack_index
    incl %eax
    shll $12, %eax
    addl $ap_stacks, %eax
    movl %eax, %esp
    lidt idt_desc
    call ap_main
3:  cli
    hlt
    jmp 3b

    .bss
    .align 4096
    .globl idt
idt:
    .space 256 * 8
    .align 16
bsp_stack:
    .space 16384
bsp_stack_top:
    .align 4096
ap_stacks:
    .space 4096 * 8
    .data
ap_stack_index:
    .long 0
