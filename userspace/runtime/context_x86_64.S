// context_x86_64.S — the G context switch (System V x86-64).
//
// kgmp_ctx_switch(void** save_sp, void* new_sp): pushes the callee-saved registers (rbp, rbx,
// r12-r15) and the SSE/x87 control words on the current stack, stores the stack pointer in
// *save_sp, loads new_sp and pops the same frame from it. Caller-saved registers need no saving:
// the switch is an ordinary function call for the compiler. A fresh G's frame (built by
// make_context in context.h) "returns" into kgmp_ctx_trampoline with r12 = the G and r13 = its
// entry function.
//
// Rejected: ucontext (a signal-mask syscall per switch, ~0.5 us), setjmp/longjmp (cannot start a
// new stack portably).

        .text
        .globl  kgmp_ctx_switch
        .type   kgmp_ctx_switch, @function
        .p2align 4
kgmp_ctx_switch:
        .cfi_startproc
        pushq   %rbp
        .cfi_adjust_cfa_offset 8
        pushq   %rbx
        .cfi_adjust_cfa_offset 8
        pushq   %r12
        .cfi_adjust_cfa_offset 8
        pushq   %r13
        .cfi_adjust_cfa_offset 8
        pushq   %r14
        .cfi_adjust_cfa_offset 8
        pushq   %r15
        .cfi_adjust_cfa_offset 8
        subq    $8, %rsp
        .cfi_adjust_cfa_offset 8
        stmxcsr (%rsp)
        fnstcw  4(%rsp)
        movq    %rsp, (%rdi)
        movq    %rsi, %rsp
        ldmxcsr (%rsp)
        fldcw   4(%rsp)
        addq    $8, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .cfi_endproc
        .size   kgmp_ctx_switch, .-kgmp_ctx_switch

        .globl  kgmp_ctx_trampoline
        .type   kgmp_ctx_trampoline, @function
        .p2align 4
kgmp_ctx_trampoline:
        .cfi_startproc
        .cfi_undefined rip       // the outermost frame of a G: backtraces stop here
        movq    %r12, %rdi
        callq   *%r13            // never returns
        ud2
        .cfi_endproc
        .size   kgmp_ctx_trampoline, .-kgmp_ctx_trampoline

        .section .note.GNU-stack,"",@progbits
