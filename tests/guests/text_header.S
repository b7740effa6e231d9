/*
 * A multiboot header at the very start of .text, for a test guest linked
 * with plain `ld -Ttext=0x100000` (no linker script): ld then also emits a
 * read-only LOAD segment holding only the ELF and program headers, one page
 * below .text at 0xff000, in the BIOS area.  The entry is boot.S's boot32.
 */

#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003   /* page-align modules, memory info */

    .text
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
