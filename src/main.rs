use std::process::ExitCode;

fn main() -> ExitCode {
    tune_malloc();
    berth::cli::main()
}

/// glibc serves blocks over 128 KiB (hyper's read buffer for an upstream body, one per chunk
/// while earlier chunks are still being hashed and spooled) with fresh `mmap`s, and trims freed
/// heap soon: every page of every buffer is then faulted in and zeroed again, about a sixth of
/// the CPU a cold fill costs. Kept in the heap and not trimmed below 64 MiB, the buffers are
/// reused instead, for a few MiB more peak memory (what was freed stays with the process).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; nothing has been allocated on other
    // threads yet (there are none).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
