//! `pyrt-child`: executed by the parent from a sealed memfd inside the container's new
//! namespaces; sets the container up and becomes its command. See `pyrt_core::child`.

// (See Cargo.toml: musl's own allocator costs a system call or two per few allocations.)
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    pyrt_core::child::main()
}
