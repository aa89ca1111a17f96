/* Reset and fault handling for the QEMU arena harness on mps2-an386 (Cortex-M4F).
   Not firmware for our targets: a bare-metal start-up so that harness.cpp and the TFLM
   objects can run under QEMU, talking to the host through ARM semihosting (newlib's
   librdimon). SysTick counts emulated time for the instruction counts. */
#include <stdint.h>
#include <string.h>

extern uint32_t __stack_top, __bss_start__, __bss_end__;
extern void __libc_init_array(void);
extern void initialise_monitor_handles(void);
extern int harness_main(void);
extern void _exit(int);

volatile uint32_t g_systick_wraps = 0;

/* Linked with -nostartfiles (our vector table and reset instead of crt0): what crti/crtbegin
   would provide for static constructors and atexit. */
void* __dso_handle = 0;
void _init(void) {}
void _fini(void) {}

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);

__attribute__((section(".vectors"), used)) const void* const g_vectors[16] = {
    &__stack_top, (void*)Reset_Handler, (void*)Fault_Handler, (void*)Fault_Handler,
    (void*)Fault_Handler, (void*)Fault_Handler, (void*)Fault_Handler, 0, 0, 0, 0,
    (void*)Fault_Handler, (void*)Fault_Handler, 0, (void*)Fault_Handler,
    (void*)SysTick_Handler,
};

#define SCB_CPACR (*(volatile uint32_t*)0xE000ED88u)
#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)

void Reset_Handler(void) {
  SCB_CPACR |= (0xFu << 20);  /* CP10, CP11: the FPU the softfp objects use */
  __asm volatile("dsb\n isb");
  memset(&__bss_start__, 0, (size_t)((char*)&__bss_end__ - (char*)&__bss_start__));
  initialise_monitor_handles();
  __libc_init_array();
  _exit(harness_main());
}

void SysTick_Handler(void) { g_systick_wraps++; }

/* A hard fault ends the run with a distinct exit status the driver reports. */
void Fault_Handler(void) { _exit(70); }

void harness_ticks_start(void) {
  SYST_CSR = 0;
  SYST_RVR = 0x00FFFFFFu;
  SYST_CVR = 0;
  g_systick_wraps = 0;
  SYST_CSR = 0x7u; /* processor clock, interrupt on wrap, enabled */
}

uint64_t harness_ticks(void) {
  uint32_t wraps1, value;
  do {
    wraps1 = g_systick_wraps;
    value = SYST_CVR;
  } while (wraps1 != g_systick_wraps);
  return (uint64_t)wraps1 * 0x01000000u + (0x00FFFFFFu - value);
}
