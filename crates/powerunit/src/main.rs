//! `powerunit`: PID 1 of every Pitwall Linux guest. All logic lives in the library
//! (`powerunit::run`); this file only refuses to run anywhere but as PID 1.

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "powerunit is the init of Pitwall guests and must run as PID 1 (from the initramfs \
             the host builds); it does nothing elsewhere"
        );
        std::process::exit(2);
    }
    powerunit::run()
}
