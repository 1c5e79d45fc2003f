#!/bin/sh
# Free the GPIO UART for the badge reader: no kernel console and no login on it.
# Equivalent to raspi-config > Interface Options > Serial Port > login shell: No,
# serial port hardware: Yes. Run as root, then reboot. Idempotent.
set -eu
boot=/boot/firmware
[ -d "$boot" ] || boot=/boot
# 1. Kernel console: drop "console=serial0,115200" (or ttyAMA0/ttyS0) from the ONE line of
#    cmdline.txt; keep console=tty1 for the HDMI console.
sed -i -E 's/(^| )console=(serial0|ttyAMA0|ttyS0),[0-9]+//g; s/^ +//' "$boot/cmdline.txt"
# 2. Login prompt: stop and mask the getty that systemd would start on the UART.
for tty in serial0 ttyAMA0 ttyS0; do
  systemctl disable --now "serial-getty@$tty.service" 2>/dev/null || true
  systemctl mask "serial-getty@$tty.service"
done
# 3. Bluetooth modem service, which would otherwise try to use the UART (disable-bt overlay).
systemctl disable --now hciuart.service 2>/dev/null || true
echo "serial console removed; check $boot/config.txt has enable_uart=1 and reboot"
