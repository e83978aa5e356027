//! Executors run a plan's steps. Each step is one `concord` command reading other steps'
//! output folders and writing its own, so it runs the same on this machine or on a cluster node
//! over a shared filesystem. [`Local`] is the executor built now: it runs up to `jobs` steps at
//! a time as child processes, in dependency order, with one overall progress bar.
//!
//! A step is finished when `steps/<id>/.done` exists; the marker is written (atomically) only
//! after the command exits successfully, so a killed run resumes by rerunning unfinished steps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use concord_core::fsutil;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::plan::{Plan, Step, step_dir};
use crate::{Error, Result};

/// The marker a finished step leaves in its output folder.
pub const DONE_FILE: &str = ".done";

/// What the marker records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub id: String,
    pub label: String,
    pub command: Vec<String>,
    pub seconds: f64,
}

/// Whether a step has finished in `run_dir`, and its record.
pub fn done(run_dir: &Path, id: &str) -> Option<Done> {
    fsutil::read_json(&step_dir(run_dir, id).join(DONE_FILE)).ok()
}

/// Runs a plan's steps.
pub trait Executor {
    /// Runs every unfinished step of `plan` under `run_dir`, each after its dependencies.
    fn run(&mut self, plan: &Plan, run_dir: &Path) -> Result<()>;
}

/// Runs steps as child processes of this machine.
#[derive(Debug)]
pub struct Local {
    /// The `concord` binary.
    pub program: PathBuf,
    /// Steps run at once (each libtorch step uses every core: 1 on a small machine).
    pub jobs: usize,
    /// Show a progress bar (off in tests and when not on a terminal).
    pub progress: bool,
}

fn log_path(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join("logs").join(format!("{id}.log"))
}

/// A step must not outlive the run that started it: killed (even with SIGKILL) and started
/// again, a run would otherwise find the old step still writing into the folder the new one
/// resumes. On Linux the child asks the kernel for SIGKILL when its parent thread dies.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid, kill, getpid).
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Runs one step to completion and writes its marker.
fn run_step(program: &Path, run_dir: &Path, step: &Step) -> Result<Done> {
    let dir = step_dir(run_dir, &step.id);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let log = log_path(run_dir, &step.id);
    fs::create_dir_all(log.parent().expect("logs have a parent"))
        .map_err(|e| Error::io(&log, e))?;
    let file = fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
    let err_file = file.try_clone().map_err(|e| Error::io(&log, e))?;
    let command = step.command(run_dir);
    tracing::info!(step = %step.id, "running {} {}", program.display(), command.join(" "));
    let start = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(&command)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .env("CONCORD_PROGRESS", "0");
    die_with_parent(&mut cmd);
    let status = cmd.status().map_err(|e| Error::io(program, e))?;
    if !status.success() {
        return Err(Error::StepFailed {
            step: format!("{} ({})", step.id, step.label),
            status: status.to_string(),
            log,
        });
    }
    let done = Done {
        id: step.id.clone(),
        label: step.label.clone(),
        command,
        seconds: start.elapsed().as_secs_f64(),
    };
    fsutil::write_json_atomic(&dir.join(DONE_FILE), &done)?;
    tracing::info!(step = %step.id, seconds = done.seconds, "finished {}", step.label);
    Ok(done)
}

impl Executor for Local {
    fn run(&mut self, plan: &Plan, run_dir: &Path) -> Result<()> {
        let mut finished: BTreeSet<String> = plan
            .steps
            .iter()
            .filter(|s| done(run_dir, &s.id).is_some())
            .map(|s| s.id.clone())
            .collect();
        let todo: Vec<&Step> = plan
            .steps
            .iter()
            .filter(|s| !finished.contains(&s.id))
            .collect();
        let bar = if self.progress {
            ProgressBar::new(plan.steps.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {wide_msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_position(finished.len() as u64);
        if todo.is_empty() {
            bar.finish_and_clear();
            return Ok(());
        }
        let mut pending: Vec<&Step> = todo;
        let mut running: BTreeMap<String, String> = BTreeMap::new();
        let (tx, rx) = mpsc::channel::<(String, Result<Done>)>();
        let mut failure = None;
        std::thread::scope(|scope| {
            loop {
                // Start every ready step while there is room (and nothing has failed).
                while failure.is_none() && running.len() < self.jobs.max(1) {
                    let Some(pos) = pending
                        .iter()
                        .position(|s| s.deps.iter().all(|d| finished.contains(d)))
                    else {
                        break;
                    };
                    let step = pending.remove(pos);
                    running.insert(step.id.clone(), step.label.clone());
                    bar.set_message(running.values().cloned().collect::<Vec<_>>().join(" | "));
                    let tx = tx.clone();
                    let program = self.program.clone();
                    scope.spawn(move || {
                        let result = run_step(&program, run_dir, step);
                        let _ = tx.send((step.id.clone(), result));
                    });
                }
                if running.is_empty() {
                    break;
                }
                let (id, result) = rx.recv().expect("a running step reports");
                running.remove(&id);
                match result {
                    Ok(_) => {
                        finished.insert(id);
                        bar.inc(1);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
                if failure.is_none()
                    && running.is_empty()
                    && !pending.is_empty()
                    && !pending
                        .iter()
                        .any(|s| s.deps.iter().all(|d| finished.contains(d)))
                {
                    failure = Some(Error::BadOutput {
                        path: run_dir.to_owned(),
                        reason: format!(
                            "{} steps wait on steps that are not in the plan",
                            pending.len()
                        ),
                    });
                }
            }
        });
        bar.finish_and_clear();
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Arg, StepKind};

    fn step(id: &str, deps: &[&str], args: &[&str]) -> Step {
        Step {
            id: id.to_owned(),
            kind: StepKind::Null,
            label: id.to_owned(),
            args: args.iter().map(|a| Arg::Text((*a).to_owned())).collect(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
            est_seconds: 0.0,
            est_bytes: 0,
        }
    }

    fn plan_of(steps: Vec<Step>) -> Plan {
        let study = crate::Study::parse(
            "name=\"t\"\nabout=\"\"\ncorpus=\"c\"\ndocs=1\neval_docs=1\n[models.m]\nmodel=\"x\"\nn_layers=2\nd_model=4\ncausal=true\nhook=\"hook_mlp_out\"\nlayers=[0]\n[train]\ntokens=1\n[[grid]]\nname=\"g\"\nquestion=\"size\"\nmodel=\"m\"\nlayers=[0]\nratios=[1,2]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        Plan {
            study,
            steps,
            saes: vec![],
            pairs: vec![],
            stores: BTreeMap::new(),
            evals: BTreeMap::new(),
            snapshot_evals: BTreeMap::new(),
        }
    }

    #[test]
    fn runs_in_order_skips_finished_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        // `sh -c 'echo $0 >> order'` records the order steps ran in.
        let order = run.join("order");
        let o = order.display().to_string();
        let cmd = |name: &str| format!("echo {name} >> {o}");
        let plan = plan_of(vec![
            step("a", &[], &["-c", &cmd("a")]),
            step("b", &["a"], &["-c", &cmd("b")]),
            step("c", &["b"], &["-c", &cmd("c")]),
        ]);
        let mut exec = Local {
            program: "sh".into(),
            jobs: 2,
            progress: false,
        };
        exec.run(&plan, run).unwrap();
        assert_eq!(fs::read_to_string(&order).unwrap(), "a\nb\nc\n");
        assert!(done(run, "c").is_some());
        // A second run does nothing.
        exec.run(&plan, run).unwrap();
        assert_eq!(fs::read_to_string(&order).unwrap(), "a\nb\nc\n");
        // A failing step stops the run, names its log, and leaves no marker.
        let bad = plan_of(vec![
            step("d", &[], &["-c", "echo oops >&2; exit 3"]),
            step("e", &["d"], &["-c", "true"]),
        ]);
        let err = exec.run(&bad, run).unwrap_err().to_string();
        assert!(err.contains("step d") && err.contains("d.log"), "{err}");
        assert!(
            fs::read_to_string(log_path(run, "d"))
                .unwrap()
                .contains("oops")
        );
        assert!(done(run, "d").is_none() && done(run, "e").is_none());
    }
}
