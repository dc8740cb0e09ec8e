//! `pyrt-runc`: an OCI runtime with runc's command line, so that podman, containerd (and through
//! them Kubernetes) can run containers on pyrt's core. A static Rust binary rather than a Python
//! console script: an interpreter that imports pyrt takes ~200 ms to start, crun ~9 ms in all
//! (benches/README.md). Executed as `pyrt-child` (from its sealed copy), it is the container's
//! setup process instead.

mod control;
mod dbus;
mod error;
mod exec;
mod info;
mod lifecycle;
mod log;
mod signals;
mod state;
mod systemd;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use error::{Result, RuncError};

#[derive(Parser)]
#[command(
    name = "pyrt-runc",
    version,
    about = "An OCI runtime (runc's command line) on pyrt's core"
)]
struct Cli {
    /// Where container state is kept.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write errors and warnings to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Not supported: pyrt-runc manages cgroups through cgroupfs only.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility; no effect.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility (true, false or auto); rootless is decided by the uid.
    #[arg(long, global = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The bundle: the directory of config.json.
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Send the pty master of a terminal process over this unix socket.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Write the container's init pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Accepted for compatibility; pyrt-runc always uses pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for compatibility; no session keyring is made.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass this many extra descriptors (3...) to the container: only 0 is supported.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    container_id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: set it up and stop before its command.
    Create(CreateArgs),
    /// Run the command of a created container.
    Start { container_id: String },
    /// Create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, short = 'd')]
        detach: bool,
        /// Keep the container's state after it exits (no delete).
        #[arg(long = "keep")]
        keep: bool,
    },
    /// Print a container's state JSON.
    State { container_id: String },
    /// Send a signal (a name, with or without SIG, or a number; default TERM).
    Kill {
        #[arg(long, short = 'a')]
        all: bool,
        container_id: String,
        signal: Option<String>,
    },
    /// Delete a container (a running one only with --force).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        container_id: String,
    },
    /// Run a process in a running container.
    Exec {
        #[arg(long)]
        process: Option<PathBuf>,
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long, short = 't')]
        tty: bool,
        #[arg(long)]
        cwd: Option<String>,
        #[arg(long, short = 'e')]
        env: Vec<String>,
        #[arg(long, short = 'u')]
        user: Option<String>,
        #[arg(long, short = 'c')]
        cap: Vec<String>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(long = "additional-gids", short = 'g')]
        additional_gids: Vec<u32>,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        #[arg(long = "process-label")]
        process_label: Option<String>,
        #[arg(long)]
        apparmor: Option<String>,
        container_id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        container_id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Write a starting config.json.
    Spec {
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
        /// A spec for an unprivileged user: a user namespace mapping them to root.
        #[arg(long = "rootless", id = "spec_rootless")]
        rootless: bool,
    },
    /// Print what this runtime implements (runtime-spec features.md).
    Features,
    /// Freeze every process of a container (the cgroup freezer).
    Pause { container_id: String },
    /// Let a paused container run on.
    Resume { container_id: String },
    /// Change a running container's limits (runc's flags, or an OCI linux.resources JSON).
    Update {
        /// A linux.resources JSON file, or - for stdin; the flags below override it.
        #[arg(long, short = 'r')]
        resources: Option<PathBuf>,
        /// Memory limit in bytes (or 512m, 1g; -1 for unlimited).
        #[arg(long, short = 'm')]
        memory: Option<String>,
        /// Memory plus swap (as --memory).
        #[arg(long = "memory-swap")]
        memory_swap: Option<String>,
        /// Accepted for compatibility: pyrt sets no soft memory limit.
        #[arg(long = "memory-reservation")]
        memory_reservation: Option<String>,
        /// Accepted for compatibility: kernel memory is no longer limited separately.
        #[arg(long = "kernel-memory")]
        kernel_memory: Option<String>,
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
        #[arg(long = "cpu-quota")]
        cpu_quota: Option<i64>,
        #[arg(long = "cpu-period")]
        cpu_period: Option<u64>,
        #[arg(long = "cpu-shares")]
        cpu_shares: Option<u64>,
        #[arg(long = "cpuset-cpus")]
        cpuset_cpus: Option<String>,
        #[arg(long = "cpuset-mems")]
        cpuset_mems: Option<String>,
        container_id: String,
    },
}

/// runc's signal words: KILL, SIGKILL, 9.
fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = s.trim_start_matches("SIG").to_ascii_uppercase();
    let names = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("POLL", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    names
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| RuncError::Usage(format!("unknown signal {s:?}")))
}

fn create_opts<'a>(
    root: &'a std::path::Path,
    a: &'a CreateArgs,
    systemd_cgroup: bool,
) -> Result<lifecycle::CreateOpts<'a>> {
    if a.preserve_fds > 0 {
        return Err(RuncError::Usage(
            "--preserve-fds is not supported by pyrt-runc".into(),
        ));
    }
    Ok(lifecycle::CreateOpts {
        root,
        id: &a.container_id,
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        systemd_cgroup,
    })
}

fn dispatch(cli: Cli) -> Result<i32> {
    let root = cli.root.clone().unwrap_or_else(state::default_root);
    let root = root.as_path();
    match &cli.command {
        Cmd::Create(a) => {
            lifecycle::create(&create_opts(root, a, cli.systemd_cgroup)?)?;
        }
        Cmd::Start { container_id } => lifecycle::start(root, container_id)?,
        Cmd::Run {
            create,
            detach,
            keep,
        } => {
            let o = create_opts(root, create, cli.systemd_cgroup)?;
            let c = lifecycle::create(&o)?;
            if let Err(e) = lifecycle::start(root, &create.container_id) {
                let _ = lifecycle::delete(root, &create.container_id, true);
                return Err(e);
            }
            if *detach {
                return Ok(0);
            }
            let code = signals::wait_forwarding(&c.child)?;
            if !keep {
                lifecycle::delete(root, &create.container_id, true)?;
            }
            return Ok(code);
        }
        Cmd::State { container_id } => info::state(root, container_id)?,
        Cmd::Kill {
            all,
            container_id,
            signal,
        } => {
            let sig = parse_signal(signal.as_deref().unwrap_or("TERM"))?;
            lifecycle::kill(root, container_id, sig, *all)?;
        }
        Cmd::Delete {
            force,
            container_id,
        } => lifecycle::delete(root, container_id, *force)?,
        Cmd::Exec {
            process,
            detach,
            pid_file,
            console_socket,
            tty,
            cwd,
            env,
            user,
            cap,
            no_new_privs,
            additional_gids,
            preserve_fds,
            process_label: _,
            apparmor: _,
            container_id,
            command,
        } => {
            if *preserve_fds > 0 {
                return Err(RuncError::Usage(
                    "--preserve-fds is not supported by pyrt-runc".into(),
                ));
            }
            let o = exec::ExecOpts {
                process: process.clone(),
                args: command.clone(),
                detach: *detach,
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                tty: *tty,
                cwd: cwd.clone(),
                env: env.clone(),
                user: user.clone(),
                caps: cap.clone(),
                no_new_privs: *no_new_privs,
                additional_gids: additional_gids.clone(),
            };
            return exec::exec(root, container_id, &o);
        }
        Cmd::Ps {
            format,
            container_id,
            ps_args,
        } => info::ps(root, container_id, format, ps_args)?,
        Cmd::List { format, quiet } => info::list(root, format, *quiet)?,
        Cmd::Spec { bundle, rootless } => info::spec(bundle, *rootless)?,
        Cmd::Features => info::features(),
        Cmd::Pause { container_id } => control::pause(root, container_id)?,
        Cmd::Resume { container_id } => control::resume(root, container_id)?,
        Cmd::Update {
            resources,
            memory,
            memory_swap,
            memory_reservation,
            kernel_memory: _,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_shares,
            cpuset_cpus,
            cpuset_mems,
            container_id,
        } => {
            let o = control::UpdateOpts {
                resources: resources.clone(),
                memory: memory.clone(),
                memory_swap: memory_swap.clone(),
                memory_reservation: memory_reservation.clone(),
                pids_limit: *pids_limit,
                cpu_quota: *cpu_quota,
                cpu_period: *cpu_period,
                cpu_shares: *cpu_shares,
                cpuset_cpus: cpuset_cpus.clone(),
                cpuset_mems: cpuset_mems.clone(),
            };
            control::update(root, container_id, &o)?
        }
    }
    Ok(0)
}

fn main() {
    // Executed from the sealed copy by spawn: be the container's setup process.
    if std::env::args_os()
        .next()
        .is_some_and(|a| a == "pyrt-child")
    {
        pyrt_core::child::main();
    }
    let cli = Cli::parse();
    log::init(cli.log.clone(), &cli.log_format);
    match dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log::write("error", &e.to_string());
            std::process::exit(1);
        }
    }
}
