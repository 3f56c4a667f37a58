//! A real engine: Slurm (Debian's slurm-wlm, with munge) runs the grid as a 4-task job array
//! (`sbatch --array=0-3 --wait`, each task `sweep GRID.yaml --worker auto`), then `--report`;
//! what it reports equals a single process running the same grid. The test starts munged,
//! slurmctld and slurmd for one node on 127.0.0.1 with configs in a temporary folder, and stops
//! them however it ends. `.ci/run` installs the packages; without them the test fails, unless
//! SAE_ONNX_SKIP_SLURM=1 says to skip it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sae_onnx::compare::CompareOptions;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::sweep::grid::Grid;
use sae_onnx::sweep::report;
use sae_onnx::sweep::run;
use sae_onnx::sweep::units::Worker;

const DAEMONS: [&str; 3] = ["munged", "slurmctld", "slurmd"];

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The daemons, stopped (and reaped) when dropped: on success, failure or panic alike.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // slurmd first (its job steps end with it), munged last (the others talk to it).
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let munge = dir.join("munge");
        for sub in ["state", "spool", "munge"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key = munge.join("munge.key");
        let bytes: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&key, bytes).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let socket = munge.join("munge.sock");
        let (host, user) = (short_hostname(), user());
        let conf = dir.join("slurm.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=saeonnxci\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser={user}\nSlurmdUser={user}\n\
                 SlurmctldPort={}\nSlurmdPort={}\nAuthType=auth/munge\nCredType=cred/munge\n\
                 AuthInfo=socket={}\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\nSwitchType=switch/none\n\
                 MpiDefault=none\nReturnToService=2\nSchedulerType=sched/builtin\nSelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_CPU\nMailProg=/bin/true\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 State=UNKNOWN\n\
                 PartitionName=ci Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n",
                free_port(),
                free_port(),
                socket.display()
            ),
        )
        .unwrap();
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: conf.clone(),
            children: Vec::new(),
        };
        let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.stderr"))).unwrap();
        let munged = Command::new(find("munged").unwrap())
            .args(["-F", "-f"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--log-file={}", munge.join("munged.log").display()))
            .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
            .arg(format!("--seed-file={}", munge.join("munged.seed").display()))
            .stdout(Stdio::null())
            .stderr(log("munged"))
            .spawn()
            .unwrap();
        cluster.children.push(("munged", munged));
        cluster.wait_for("munged", || socket.exists());
        for daemon in ["slurmctld", "slurmd"] {
            let child = Command::new(find(daemon).unwrap())
                .args(["-D", "-f"])
                .arg(&conf)
                .env("SLURM_CONF", &conf)
                .stdout(Stdio::null())
                .stderr(log(daemon))
                .spawn()
                .unwrap();
            cluster.children.push((daemon, child));
        }
        cluster.wait_for("an idle node", || {
            cluster
                .slurm("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    fn slurm(&self, program: &str) -> Command {
        let mut cmd = Command::new(find(program).unwrap());
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    fn wait_for(&self, what: &str, ready: impl Fn() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no {what} after 60 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        [
            "munge/munged.log",
            "slurmctld.log",
            "slurmd.log",
            "munged.stderr",
            "slurmctld.stderr",
            "slurmd.stderr",
        ]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            format!(
                "== {f}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }
}

fn grid(dir: &Path, output: &str) -> PathBuf {
    let repo = |rel: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(rel)
            .display()
            .to_string()
    };
    let path = dir.join(format!("{output}.yaml"));
    std::fs::write(
        &path,
        format!(
            "model: tiny.onnx\nplans:\n  - name: dog\n    csv: {}\n    coefficients: [0, 24]\n\
             tasks: [{}]\neval: {{limit: 12, batch_size: 4}}\nshards: 2\noutput: {output}\n",
            repo("models/tiny-gemma2/steer.csv"),
            repo("models/tiny-gemma2/demo_mc.yaml"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_slurm_job_array_runs_the_grid_and_reports_what_one_process_does() {
    let missing: Vec<&str> = DAEMONS
        .iter()
        .chain(&["sbatch", "sinfo"])
        .copied()
        .filter(|p| find(p).is_none())
        .collect();
    if !missing.is_empty() {
        if std::env::var_os("SAE_ONNX_SKIP_SLURM").is_some() {
            eprintln!(
                "skipped (SAE_ONNX_SKIP_SLURM): {} not installed",
                missing.join(", ")
            );
            return;
        }
        panic!(
            "{} not installed: `apt-get install slurm-wlm munge` (as .ci/run does), or set SAE_ONNX_SKIP_SLURM=1",
            missing.join(", ")
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    export::export(
        "models/tiny-gemma2",
        &work.join("tiny.onnx"),
        &ExportOptions::default(),
    )
    .unwrap();
    let on_slurm = grid(&work, "slurm");
    let cluster = Cluster::start(&tmp.path().join("cluster"));

    let script = work.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' -q sweep '{}' --worker auto\n",
            env!("CARGO_BIN_EXE_sae-onnx"),
            on_slurm.display()
        ),
    )
    .unwrap();
    let out = cluster
        .slurm("sbatch")
        .args(["--array=0-3", "--wait", "--time=10", "--chdir"])
        .arg(&work)
        .arg("--output")
        .arg(work.join("worker_%a.log"))
        .arg(&script)
        .output()
        .unwrap();
    let worker_logs: String = (0..4)
        .map(|k| std::fs::read_to_string(work.join(format!("worker_{k}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "sbatch: {}\n{}\nworkers:\n{worker_logs}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    for k in 0..4 {
        assert!(
            worker_logs.contains(&format!("worker {k}/4 (Slurm array task {k} of 4")),
            "{worker_logs}"
        );
    }
    assert_eq!(worker_logs.matches("1 units run").count(), 4, "{worker_logs}");
    drop(cluster);

    let options = CompareOptions {
        resamples: 500,
        ..Default::default()
    };
    let slurm = report::report(&Grid::load(&on_slurm).unwrap(), &options).unwrap();
    let single = Grid::load(&grid(&work, "single")).unwrap();
    run::run_worker(&single, Worker { index: 0, count: 1 }, None, false).unwrap();
    let local = report::report(&single, &options).unwrap();
    assert_eq!(slurm.rows.len(), 4);
    let (a, b) = (
        std::fs::read_to_string(&slurm.csv).unwrap(),
        std::fs::read_to_string(&local.csv).unwrap(),
    );
    assert!(a == b, "on Slurm:\n{a}\nin one process:\n{b}");
}
