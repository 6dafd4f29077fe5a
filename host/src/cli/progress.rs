//! Progress of long CLI operations on standard error: on a terminal, a spinner with the time
//! spent so far; elsewhere (logs, CI), one line when a step starts and one when it ends.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One step of a long operation, shown until [`Step::done`] or [`Step::failed`].
pub struct Step {
    label: String,
    started: Instant,
    spinner: Option<tokio::task::JoinHandle<()>>,
}

impl Step {
    pub fn start(label: impl Into<String>) -> Step {
        let label = label.into();
        let started = Instant::now();
        let spinner = if std::io::stderr().is_terminal() {
            let shown = label.clone();
            Some(tokio::spawn(async move {
                const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
                for frame in FRAMES.iter().cycle() {
                    {
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r{frame} {shown} {:.1} s ", started.elapsed().as_secs_f64());
                        let _ = err.flush();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }))
        } else {
            eprintln!("{label}…");
            None
        };
        Step {
            label,
            started,
            spinner,
        }
    }

    pub fn done(self) {
        self.end("done");
    }

    pub fn failed(self) {
        self.end("failed");
    }

    fn end(mut self, how: &str) {
        let terminal = self.spinner.take().map(|s| s.abort()).is_some();
        let elapsed = self.started.elapsed().as_secs_f64();
        if terminal {
            eprintln!("\r{} {how} in {elapsed:.1} s   ", self.label);
        } else {
            eprintln!("{} {how} in {elapsed:.1} s", self.label);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.abort();
            eprintln!();
        }
    }
}
