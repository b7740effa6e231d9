/*
 * pemu's test guest: one multiboot kernel, the test chosen on its command
 * line ("test=NAME ...").  It reports over COM1 and ends through
 * isa-debug-exit at port 0x501: 0 for "passed" (pemu exits with 1),
 * other values for failures.  Tests:
 *
 *   serial   print a greeting                       "hello from the test guest"
 *   cmdline  print the command line                  "cmdline: <text>"
 *   mmap     walk the multiboot memory map           "mmap: N entries ... mmap ok"
 *   pit      10 IRQ0 ticks through the 8259          "pit: 10 ticks"
 *   lapic    10 LAPIC timer interrupts                "lapic: 10 ticks"
 *   smp      INIT/SIPI the APs, count them (cpus=N)  "smp: N cpus up"
 *   io       a port I/O device (RTC) and MMIO         "rtc register d: 80", "mmio fed00000: ..."
 *   exit     exit with code=N                          (no output)
 *   pio      N=count writes to port 0x80 (the benchmark)
 *   idle     halt for good, interrupts off, after     "idle"
 *            switching on the RTC's periodic
 *            interrupt with rtc=periodic
 *   edu      QEMU's edu device: identification,       "edu: ... edu ok"
 *            factorial, INTx status, DMA both ways,
 *            an MSI taken through the LAPIC
 *   pctestdev  pc-testdev: scratch ports, memory      "pc-testdev: ... pc-testdev ok"
 *            window, IRQ 3 raised from its port
 *   pcitestdev pci-testdev: found, BARs sized, one    "pci-testdev: ... pci-testdev ok"
 *            MMIO and one port I/O test counted
 *   cpuid    the vendor, leaf 1 and leaf 7 features    "cpuid 1: ecx=... edx=..."
 *   rsdp     scan 0xE0000-0xFFFFF for the ACPI RSDP    "rsdp: found at ... rsdt ... ok"
 *            and check it and the RSDT it names
 *   lowseg   a kernel linked with a segment at 0x9000   "lowseg: marker intact ..."
 *            (guest-lowseg.ld) finds it intact and
 *            the information elsewhere
 *   count    count for ever, a line each delay=N loops  "count 1", "count 2", ...
 *            (the migration tests move it between
 *            processes while it counts)
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define COM1 0x3F8
#define DEBUG_EXIT 0x501
#define LAPIC_BASE 0xFEE00000u
#define AP_TRAMPOLINE_ADDR 0x8000

struct mb_info {
    u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mmap_entry {
    u32 size;
    u64 addr, len;
    u32 type;
} __attribute__((packed));

extern char ap_trampoline[], ap_trampoline_end[];

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read(u32 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write(u32 addr, u32 v) { *(volatile u32 *)addr = v; }

static volatile int print_lock;

static void serial_putc(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++)
        ;
    outb(COM1, c);
}

static void puts_raw(const char *s)
{
    for (; *s; s++) {
        if (*s == '\n')
            serial_putc('\r');
        serial_putc(*s);
    }
}

static void put_hex(u64 v, int digits)
{
    char buf[17];
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        buf[i] = "0123456789abcdef"[v & 15];
    buf[digits] = 0;
    puts_raw(buf);
}

static void put_dec(u32 v)
{
    char buf[11];
    int i = 10;
    buf[i] = 0;
    do {
        buf[--i] = '0' + v % 10;
        v /= 10;
    } while (v);
    puts_raw(buf + i);
}

static void lock(void) { while (__sync_lock_test_and_set(&print_lock, 1)) __asm__ volatile("pause"); }
static void unlock(void) { __sync_lock_release(&print_lock); }

static void __attribute__((noreturn)) debug_exit(u8 code)
{
    outb(DEBUG_EXIT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

static int str_eq_prefix(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

/* The value of "key=" in the command line (a pointer into it), or 0. */
static const char *arg(const char *cmdline, const char *key)
{
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        if (str_eq_prefix(p, key)) {
            const char *k = key;
            const char *q = p;
            while (*k)
                k++, q++;
            if (*q == '=')
                return q + 1;
        }
        while (*p && *p != ' ')
            p++;
    }
    return 0;
}

static u32 arg_num(const char *cmdline, const char *key, u32 fallback)
{
    const char *v = arg(cmdline, key);
    if (!v)
        return fallback;
    u32 n = 0;
    while (*v >= '0' && *v <= '9')
        n = n * 10 + (u32)(*v++ - '0');
    return n;
}

/* -- interrupts ------------------------------------------------------------------ */

static volatile u32 pit_ticks, lapic_ticks, spurious, edu_msis, testdev_irqs;

#define PIC_VECTOR_BASE 0x20
#define LAPIC_TIMER_VECTOR 0x40
#define EDU_MSI_VECTOR 0x50
#define TESTDEV_IRQ 3
#define EDU_BAR 0xC0000000u
#define TESTDEV_MMIO_BAR 0xC0100000u
#define TESTDEV_IO_BAR 0xC000

void guest_interrupt(u32 vector)
{
    if (vector == PIC_VECTOR_BASE) {
        pit_ticks++;
        outb(0x20, 0x20);
    } else if (vector == LAPIC_TIMER_VECTOR) {
        lapic_ticks++;
        mmio_write(LAPIC_BASE + 0xB0, 0);
    } else if (vector == EDU_MSI_VECTOR) {
        edu_msis++;
        mmio_write(EDU_BAR + 0x64, mmio_read(EDU_BAR + 0x24));   /* acknowledge in the device */
        mmio_write(LAPIC_BASE + 0xB0, 0);
    } else if (vector == PIC_VECTOR_BASE + TESTDEV_IRQ) {
        testdev_irqs++;
        outb(0x2000 + TESTDEV_IRQ, 0);                    /* lower the line, then EOI */
        outb(0x20, 0x20);
    } else if (vector < 32) {
        lock();
        puts_raw("exception ");
        put_dec(vector);
        puts_raw("\n");
        unlock();
        debug_exit(0x40 + (u8)vector);
    } else {
        spurious++;
    }
}

static void pic_init(u8 mask_master)
{
    outb(0x20, 0x11); outb(0xA0, 0x11);               /* ICW1: edge, cascade, ICW4 */
    outb(0x21, PIC_VECTOR_BASE); outb(0xA1, PIC_VECTOR_BASE + 8);
    outb(0x21, 0x04); outb(0xA1, 0x02);
    outb(0x21, 0x01); outb(0xA1, 0x01);
    outb(0x21, mask_master); outb(0xA1, 0xFF);
}

static int wait_ticks(volatile u32 *counter, u32 want)
{
    /* hlt until enough ticks came; give up after many wake-ups without one. */
    for (u32 idle = 0; *counter < want && idle < 100000; idle++)
        __asm__ volatile("sti; hlt; cli");
    return *counter >= want;
}

static int test_pit(void)
{
    pic_init(0xFE);                                   /* IRQ0 only */
    outb(0x43, 0x34);                                 /* channel 0, lo/hi, mode 2 */
    outb(0x40, 1193 & 0xFF);                          /* 1 kHz */
    outb(0x40, 1193 >> 8);
    int ok = wait_ticks(&pit_ticks, 10);
    puts_raw("pit: ");
    put_dec(pit_ticks);
    puts_raw(" ticks\n");
    return ok ? 0 : 2;
}

static int test_lapic(void)
{
    pic_init(0xFF);
    mmio_write(LAPIC_BASE + 0xF0, 0x1FF);             /* software enable, spurious vector 0xff */
    mmio_write(LAPIC_BASE + 0x3E0, 0xB);              /* divide by 1 */
    mmio_write(LAPIC_BASE + 0x320, (1 << 17) | LAPIC_TIMER_VECTOR);  /* periodic */
    mmio_write(LAPIC_BASE + 0x380, 200000);
    int ok = wait_ticks(&lapic_ticks, 10);
    mmio_write(LAPIC_BASE + 0x320, 1 << 16);
    puts_raw("lapic: ");
    put_dec(lapic_ticks);
    puts_raw(" ticks\n");
    return ok ? 0 : 3;
}

static int test_mmap(struct mb_info *info)
{
    if (!(info->flags & (1 << 6)))
        return 4;
    u32 n = 0, ram_low = 0, ram_high = 0;
    u32 end = info->mmap_addr + info->mmap_length;
    for (u32 p = info->mmap_addr; p < end; n++) {
        struct mb_mmap_entry *e = (struct mb_mmap_entry *)p;
        puts_raw("mmap: ");
        put_hex(e->addr, 16);
        puts_raw("-");
        put_hex(e->addr + e->len - 1, 16);
        puts_raw(" type ");
        put_dec(e->type);
        puts_raw("\n");
        if (e->type == 1 && e->addr == 0)
            ram_low = 1;
        if (e->type == 1 && e->addr == 0x100000 && (u32)(e->len >> 10) == info->mem_upper)
            ram_high = 1;
        p += e->size + 4;
    }
    puts_raw("mmap: ");
    put_dec(n);
    puts_raw(" entries, mem_lower ");
    put_dec(info->mem_lower);
    puts_raw(" KiB, mem_upper ");
    put_dec(info->mem_upper);
    puts_raw(" KiB\n");
    if (!ram_low || !ram_high || info->mem_lower != 639)
        return 5;
    puts_raw("mmap ok\n");
    return 0;
}

/* -- SMP ---------------------------------------------------------------------------- */

static volatile u32 cpus_up = 1;

void ap_main(void)
{
    u32 id = mmio_read(LAPIC_BASE + 0x20) >> 24;
    lock();
    puts_raw("ap: cpu with apic id ");
    put_dec(id);
    puts_raw(" is up\n");
    unlock();
    __sync_fetch_and_add(&cpus_up, 1);
}

static void lapic_icr(u32 low)
{
    mmio_write(LAPIC_BASE + 0x310, 0);
    mmio_write(LAPIC_BASE + 0x300, low);
    for (int i = 0; i < 100000 && (mmio_read(LAPIC_BASE + 0x300) & (1 << 12)); i++)
        ;
}

static void delay(u32 loops)
{
    for (volatile u32 i = 0; i < loops; i++)
        ;
}

static int test_smp(const char *cmdline)
{
    u32 want = arg_num(cmdline, "cpus", 2);
    u8 *dst = (u8 *)AP_TRAMPOLINE_ADDR;
    for (char *p = ap_trampoline; p < ap_trampoline_end; p++)
        *dst++ = (u8)*p;
    mmio_write(LAPIC_BASE + 0xF0, 0x1FF);
    lapic_icr(0x000C4500);                            /* INIT to all but self */
    delay(1000);
    lapic_icr(0x000C4600 | (AP_TRAMPOLINE_ADDR >> 12));  /* SIPI */
    delay(1000);
    if (cpus_up < want)
        lapic_icr(0x000C4600 | (AP_TRAMPOLINE_ADDR >> 12));
    for (u32 i = 0; i < 2000000 && cpus_up < want; i++)
        __asm__ volatile("pause");
    lock();
    puts_raw("smp: ");
    put_dec(cpus_up);
    puts_raw(" cpus up\n");
    unlock();
    return cpus_up == want ? 0 : 6;
}

/* -- devices ----------------------------------------------------------------------- */

static int test_io(void)
{
    outb(0x70, 0x0D);                                 /* RTC status register D */
    u8 rtc_d = inb(0x71);
    puts_raw("rtc register d: ");
    put_hex(rtc_d, 2);
    puts_raw("\n");
    u32 v = mmio_read(0xFED00000u);                   /* the HPET window */
    puts_raw("mmio fed00000: ");
    put_hex(v, 8);
    puts_raw("\n");
    return rtc_d == 0x80 ? 0 : 7;
}

/* -- QEMU's test devices ------------------------------------------------------------ */

static u32 pci_cfg_addr(u32 slot, u32 reg) { return 0x80000000u | (slot << 11) | (reg & 0xFC); }
static u32 pci_read32(u32 slot, u32 reg) { outl(0xCF8, pci_cfg_addr(slot, reg)); return inl(0xCFC); }
static void pci_write32(u32 slot, u32 reg, u32 v) { outl(0xCF8, pci_cfg_addr(slot, reg)); outl(0xCFC, v); }

/* The slot of vendor:device on bus 0, or -1. */
static int pci_find(u32 id)
{
    for (int slot = 0; slot < 32; slot++)
        if (pci_read32(slot, 0) == id)
            return slot;
    return -1;
}

/* Size a BAR the way firmware does: all-ones, read back, restore. */
static u32 pci_bar_size(int slot, int bar)
{
    u32 reg = 0x10 + 4 * bar, old = pci_read32(slot, reg);
    pci_write32(slot, reg, 0xFFFFFFFFu);
    u32 v = pci_read32(slot, reg);
    pci_write32(slot, reg, old);
    u32 mask = (v & 1) ? (v & ~3u) | 0xFFFF0000u : v & ~15u;
    return mask ? ~mask + 1 : 0;
}

static void put_labeled(const char *label, u32 v)
{
    puts_raw(label);
    put_hex(v, 8);
    puts_raw("\n");
}

static u8 edu_src[64], edu_dst[64];

static int edu_dma(u32 src, u32 dst, u32 count, u32 cmd)
{
    mmio_write(EDU_BAR + 0x80, src); mmio_write(EDU_BAR + 0x84, 0);   /* 32-bit halves: */
    mmio_write(EDU_BAR + 0x88, dst);                                  /* 0x84 and 0x8c are not */
    mmio_write(EDU_BAR + 0x90, count);                                /* registers, ignored */
    mmio_write(EDU_BAR + 0x98, cmd);
    for (u32 i = 0; i < 50000000 && (mmio_read(EDU_BAR + 0x98) & 1); i++)
        __asm__ volatile("pause");
    return !(mmio_read(EDU_BAR + 0x98) & 1);
}

static int test_edu(void)
{
    int slot = pci_find(0x11E81234);
    if (slot < 0) {
        puts_raw("edu: not found\n");
        return 0x20;
    }
    u32 size = pci_bar_size(slot, 0);
    put_labeled("edu: bar0 size ", size);
    pci_write32(slot, 0x10, EDU_BAR);
    pci_write32(slot, 0x04, 0x0006);                  /* memory decoding, bus master */
    u32 id = mmio_read(EDU_BAR);
    put_labeled("edu: id ", id);
    mmio_write(EDU_BAR + 4, 0x12345678);
    u32 live = mmio_read(EDU_BAR + 4);
    mmio_write(EDU_BAR + 8, 10);
    for (u32 i = 0; i < 1000000 && (mmio_read(EDU_BAR + 0x20) & 1); i++)
        ;
    u32 fact = mmio_read(EDU_BAR + 8);
    puts_raw("edu: 10! = ");
    put_dec(fact);
    puts_raw("\n");
    if (size != 0x100000 || id != 0x010000ED || live != 0xEDCBA987 || fact != 3628800)
        return 0x21;

    /* INTx: the status register's interrupt bit follows the device's pin. */
    mmio_write(EDU_BAR + 0x60, 0x100);
    u32 raised = pci_read32(slot, 0x04) >> 16 & 0x8;
    mmio_write(EDU_BAR + 0x64, 0x100);
    u32 lowered = pci_read32(slot, 0x04) >> 16 & 0x8;
    puts_raw(raised && !lowered ? "edu: intx ok\n" : "edu: intx wrong\n");
    if (!raised || lowered)
        return 0x22;

    /* DMA: RAM -> the device's buffer -> elsewhere in RAM. */
    for (int i = 0; i < 64; i++)
        edu_src[i] = (u8)(i * 7 + 1), edu_dst[i] = 0;
    if (!edu_dma((u32)edu_src, 0x40000, 64, 1) || !edu_dma(0x40000, (u32)edu_dst, 64, 3))
        return 0x23;
    for (int i = 0; i < 64; i++)
        if (edu_dst[i] != edu_src[i]) {
            puts_raw("edu: dma data wrong\n");
            return 0x24;
        }
    puts_raw("edu: dma ok\n");

    /* MSI: address 0xFEE00000 (APIC ID 0), data = the vector. */
    u32 cap = pci_read32(slot, 0x34) & 0xFF;
    while (cap && (pci_read32(slot, cap) & 0xFF) != 0x05)
        cap = pci_read32(slot, cap) >> 8 & 0xFF;
    if (!cap) {
        puts_raw("edu: no msi capability\n");
        return 0x25;
    }
    u32 flags = pci_read32(slot, cap) >> 16;
    pci_write32(slot, cap + 4, 0xFEE00000u);
    u32 data_reg = (flags & 0x80) ? cap + 12 : cap + 8;   /* 64-bit capable: data after the high address */
    if (flags & 0x80)
        pci_write32(slot, cap + 8, 0);
    pci_write32(slot, data_reg, EDU_MSI_VECTOR);
    pci_write32(slot, cap, (pci_read32(slot, cap) & 0xFFFF) | ((flags | 1) << 16));
    pic_init(0xFF);
    mmio_write(LAPIC_BASE + 0xF0, 0x1FF);
    mmio_write(EDU_BAR + 0x60, 0x1);
    wait_ticks(&edu_msis, 1);
    mmio_write(EDU_BAR + 0x20, 0x80);                 /* factorial done -> interrupt */
    mmio_write(EDU_BAR + 8, 5);
    wait_ticks(&edu_msis, 2);
    puts_raw("edu: msis ");
    put_dec(edu_msis);
    puts_raw("\n");
    if (edu_msis != 2 || mmio_read(EDU_BAR + 0x24) != 0)
        return 0x26;
    puts_raw("edu ok\n");
    return 0;
}

static int test_pc_testdev(void)
{
    outl(0xE0, 0x12345678);
    u32 scratch = inl(0xE0);
    u8 b2 = inb(0xEA);                                /* the byte-wise view of the same register */
    outb(0xE9, 0xAB);
    u32 after = inl(0xE8);
    put_labeled("pc-testdev: scratch ", scratch);
    put_labeled("pc-testdev: after byte write ", after);
    volatile u32 *iomem = (volatile u32 *)0xFF000000u;
    iomem[0] = 0xCAFEF00D;
    iomem[0x3FFF] = 0x5A5AA5A5;                       /* the window's last word */
    u32 m0 = iomem[0], m1 = iomem[0x3FFF];
    if (scratch != 0x12345678 || b2 != 0x34 || after != 0x1234AB78 || m0 != 0xCAFEF00D || m1 != 0x5A5AA5A5)
        return 0x30;
    pic_init((u8)~(1 << TESTDEV_IRQ));
    outb(0x2000 + TESTDEV_IRQ, 1);
    wait_ticks(&testdev_irqs, 1);
    puts_raw("pc-testdev: irq ");
    put_dec(TESTDEV_IRQ);
    puts_raw(" interrupts ");
    put_dec(testdev_irqs);
    puts_raw("\n");
    if (testdev_irqs != 1)
        return 0x31;
    puts_raw("pc-testdev ok\n");
    return 0;
}

/* pci-testdev: select a test, read its name, hit its offset, read the count. */
static u32 iotest_mmio(u32 test, char *name)
{
    volatile u8 *bar = (volatile u8 *)TESTDEV_MMIO_BAR;
    bar[0] = (u8)test;
    u32 offset = bar[4] | bar[5] << 8 | bar[6] << 16 | (u32)bar[7] << 24;
    for (int i = 0; i < 31 && (name[i] = (char)bar[16 + i]); i++)
        ;
    bar[offset] = bar[8];
    return bar[12] | bar[13] << 8 | bar[14] << 16 | (u32)bar[15] << 24;
}

static u32 iotest_pio(u32 test, char *name)
{
    outb(TESTDEV_IO_BAR, (u8)test);
    u32 offset = inb(TESTDEV_IO_BAR + 4) | inb(TESTDEV_IO_BAR + 5) << 8;
    for (int i = 0; i < 31 && (name[i] = (char)inb(TESTDEV_IO_BAR + 16 + i)); i++)
        ;
    outb(TESTDEV_IO_BAR + offset, 0x42);               /* any data: the wildcard test counts it */
    return inb(TESTDEV_IO_BAR + 12);
}

static int test_pci_testdev(void)
{
    int slot = pci_find(0x00051B36);
    if (slot < 0) {
        puts_raw("pci-testdev: not found\n");
        return 0x40;
    }
    u32 size0 = pci_bar_size(slot, 0), size1 = pci_bar_size(slot, 1);
    puts_raw("pci-testdev: bar0 ");
    put_dec(size0);
    puts_raw(" bytes of memory, bar1 ");
    put_dec(size1);
    puts_raw(" ports\n");
    pci_write32(slot, 0x10, TESTDEV_MMIO_BAR);
    pci_write32(slot, 0x14, TESTDEV_IO_BAR | 1);
    pci_write32(slot, 0x04, 0x0003);
    char name0[32] = {0}, name1[32] = {0};
    u32 c0 = iotest_mmio(0, name0), c1 = iotest_pio(1, name1);
    puts_raw("pci-testdev: ");
    puts_raw(name0);
    puts_raw(" ");
    put_dec(c0);
    puts_raw(", ");
    puts_raw(name1);
    puts_raw(" ");
    put_dec(c1);
    puts_raw("\n");
    if (size0 != 4096 || size1 != 256 || c0 != 1 || c1 != 1)
        return 0x41;
    puts_raw("pci-testdev ok\n");
    return 0;
}

static void cpuid(u32 leaf, u32 sub, u32 *r)
{
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void test_cpuid(void)
{
    u32 r[4], v[5];
    cpuid(0, 0, r);
    u32 level = r[0];
    v[0] = r[1], v[1] = r[3], v[2] = r[2], v[3] = v[4] = 0;
    puts_raw("cpuid 0: level ");
    put_hex(level, 8);
    puts_raw(" vendor ");
    puts_raw((const char *)v);
    cpuid(1, 0, r);
    puts_raw("\ncpuid 1: eax=");
    put_hex(r[0], 8);
    puts_raw(" ecx=");
    put_hex(r[2], 8);
    puts_raw(" edx=");
    put_hex(r[3], 8);
    if (level >= 7)
        cpuid(7, 0, r);
    else
        r[1] = r[2] = r[3] = 0;
    puts_raw("\ncpuid 7: ebx=");
    put_hex(r[1], 8);
    puts_raw(" ecx=");
    put_hex(r[2], 8);
    puts_raw(" edx=");
    put_hex(r[3], 8);
    cpuid(0x80000000, 0, r);
    u32 xlevel = r[0];
    if (xlevel >= 0x80000001)
        cpuid(0x80000001, 0, r);
    else
        r[2] = r[3] = 0;
    puts_raw("\ncpuid 80000001: ecx=");
    put_hex(r[2], 8);
    puts_raw(" edx=");
    put_hex(r[3], 8);
    cpuid(0x40000000, 0, r);
    v[0] = r[1], v[1] = r[2], v[2] = r[3], v[3] = 0;
    puts_raw("\ncpuid 40000000: eax=");
    put_hex(r[0], 8);
    puts_raw(" signature ");
    puts_raw(str_eq_prefix((const char *)v, "KVMKVMKVM") ? "KVMKVMKVM" : "none");
    if (r[0] >= 0x40000001 && str_eq_prefix((const char *)v, "KVMKVMKVM"))
        cpuid(0x40000001, 0, r);
    else
        r[0] = 0;
    puts_raw("\ncpuid 40000001: eax=");
    put_hex(r[0], 8);
    puts_raw("\n");
}

static int checksum_ok(const u8 *p, u32 len)
{
    u8 sum = 0;
    for (u32 i = 0; i < len; i++)
        sum += p[i];
    return sum == 0;
}

static int test_rsdp(void)
{
    for (u32 addr = 0xE0000; addr < 0x100000; addr += 16) {
        const u8 *p = (const u8 *)addr;
        if (!str_eq_prefix((const char *)p, "RSD PTR ") || !checksum_ok(p, 20))
            continue;
        u32 rsdt = *(const u32 *)(p + 16);
        puts_raw("rsdp: found at ");
        put_hex(addr, 8);
        puts_raw(" revision ");
        put_dec(p[15]);
        puts_raw(" rsdt ");
        put_hex(rsdt, 8);
        puts_raw("\n");
        const u8 *t = (const u8 *)rsdt;
        u32 length = *(const u32 *)(t + 4);
        if (!str_eq_prefix((const char *)t, "RSDT") || length > 0x10000 || !checksum_ok(t, length))
            return 0x50;
        if (p[15] >= 2 && !checksum_ok(p, 36))
            return 0x51;
        puts_raw("rsdp ok\n");
        return 0;
    }
    puts_raw("rsdp: not found\n");
    return 0x52;
}

/* Linked at 0x9000 by guest-lowseg.ld, where pemu once put the multiboot information. */
__attribute__((section(".lowseg"))) volatile char low_marker[64] = "the kernel's own data at 0x9000";

static int test_lowseg(struct mb_info *info)
{
    puts_raw("lowseg: marker at ");
    put_hex((u32)low_marker, 8);
    puts_raw(", information at ");
    put_hex((u32)info, 8);
    puts_raw("\n");
    const char *want = "the kernel's own data at 0x9000";
    for (int i = 0; want[i]; i++)
        if (low_marker[i] != want[i])
            return 0x60;
    puts_raw("lowseg: marker intact\n");
    return 0;
}

static void test_pio(const char *cmdline)
{
    u32 n = arg_num(cmdline, "count", 10000);
    for (u32 i = 0; i < n; i++)
        outb(0x80, (u8)i);
}

/* Count on the console for ever; the count lives in RAM and registers, so a
 * migrated guest shows neither a gap nor a repeat. */
static void __attribute__((noreturn)) test_count(const char *cmdline)
{
    u32 loops = arg_num(cmdline, "delay", 20000);
    for (u32 i = 1;; i++) {
        puts_raw("count ");
        put_dec(i);
        puts_raw("\n");
        delay(loops);
    }
}

/* Stay alive doing nothing, so the host can act on a running machine. */
static void __attribute__((noreturn)) test_idle(const char *cmdline)
{
    const char *rtc = arg(cmdline, "rtc");
    if (rtc && str_eq_prefix(rtc, "periodic")) {
        outb(0x70, 0x0A);
        outb(0x71, 0x26);                             /* RTC register A: 1024 Hz */
        outb(0x70, 0x0B);
        u8 b = inb(0x71);
        outb(0x70, 0x0B);
        outb(0x71, b | 0x40);                         /* register B: PIE */
    }
    puts_raw("idle\n");
    for (;;)
        __asm__ volatile("cli; hlt");
}

void guest_main(u32 magic, struct mb_info *info)
{
    if (magic != 0x2BADB002)
        debug_exit(0x10);
    const char *cmdline = (info->flags & (1 << 2)) ? (const char *)info->cmdline : "";
    const char *test = arg(cmdline, "test");
    int rc = 0;
    if (!test)
        debug_exit(0x11);
    if (str_eq_prefix(test, "serial")) {
        puts_raw("hello from the test guest\n");
    } else if (str_eq_prefix(test, "cmdline")) {
        puts_raw("cmdline: ");
        puts_raw(cmdline);
        puts_raw("\n");
    } else if (str_eq_prefix(test, "mmap")) {
        rc = test_mmap(info);
    } else if (str_eq_prefix(test, "pit")) {
        rc = test_pit();
    } else if (str_eq_prefix(test, "lapic")) {
        rc = test_lapic();
    } else if (str_eq_prefix(test, "smp")) {
        rc = test_smp(cmdline);
    } else if (str_eq_prefix(test, "io")) {
        rc = test_io();
    } else if (str_eq_prefix(test, "exit")) {
        debug_exit((u8)arg_num(cmdline, "code", 0));
    } else if (str_eq_prefix(test, "pio")) {
        test_pio(cmdline);
    } else if (str_eq_prefix(test, "edu")) {
        rc = test_edu();
    } else if (str_eq_prefix(test, "pctestdev")) {
        rc = test_pc_testdev();
    } else if (str_eq_prefix(test, "pcitestdev")) {
        rc = test_pci_testdev();
    } else if (str_eq_prefix(test, "rsdp")) {
        rc = test_rsdp();
    } else if (str_eq_prefix(test, "lowseg")) {
        rc = test_lowseg(info);
    } else if (str_eq_prefix(test, "cpuid")) {
        test_cpuid();
    } else if (str_eq_prefix(test, "count")) {
        test_count(cmdline);
    } else if (str_eq_prefix(test, "idle")) {
        test_idle(cmdline);
    } else {
        puts_raw("unknown test\n");
        rc = 0x12;
    }
    if (rc == 0)
        puts_raw("TEST PASSED\n");
    else
        puts_raw("TEST FAILED\n");
    debug_exit((u8)rc);
}
