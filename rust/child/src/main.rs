//! `pyrt-child`: executed by the parent from a sealed memfd inside the container's new
//! namespaces; sets the container up and becomes its command. See `pyrt_core::child`.

fn main() {
    pyrt_core::child::main()
}
