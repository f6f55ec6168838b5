//! The `fairness` scenario: K logged-in sessions send NOOP in a loop while other clients do
//! slow work, one kind at a time (nothing, logins to a slow account, LIST and MLSD of a large
//! directory, one large STOR). A server that does slow work where it waits for sockets (one
//! event loop) makes every NOOP wait behind it; the percentiles per phase show it.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::stats::{percentile, sorted_ms, Metric, ScenarioResult};
use super::Bench;
use crate::ftp::Client;

/// The phase value that tells the NOOP sessions to stop.
const STOP: usize = usize::MAX;
/// How long the baseline phase lasts.
const BASELINE: Duration = Duration::from_secs(2);
/// Logins per slow-login client, and how many such clients log in at once.
const LOGINS: usize = 10;
const LOGIN_CLIENTS: usize = 2;
/// Listings of each kind.
const LISTINGS: usize = 3;

type Work<'a> = Box<dyn Fn() -> Result<(), String> + Sync + 'a>;

impl Bench<'_> {
    pub(super) fn fairness(&self) -> Result<ScenarioResult, String> {
        let dir = self.remote("zocalo-bench-list");
        let big = self.remote("zocalo-bench-fair.bin");
        let mut phases: Vec<(&str, Work)> = vec![(
            "idle",
            Box::new(|| {
                std::thread::sleep(BASELINE);
                Ok(())
            }),
        )];
        if let Some((user, pass)) = &self.opts.slow_login {
            phases.push(("logins", Box::new(move || self.slow_logins(user, pass))));
        }
        phases.push(("LIST", Box::new(|| self.repeat(LISTINGS, |c| c.list(&dir).map(drop)))));
        phases.push(("MLSD", Box::new(|| self.repeat(LISTINGS, |c| c.mlsd(&dir).map(drop)))));
        phases.push(("STOR", Box::new(|| self.store(&big))));
        if self.opts.create_listing {
            let mut client = self.client().map_err(|e| e.to_string())?;
            self.create_listing(&mut client, &dir).map_err(|e| e.to_string())?;
            let _ = client.quit();
        }
        let phase = AtomicUsize::new(0);
        let samples: Mutex<Vec<(usize, Duration)>> = Mutex::new(Vec::new());
        let mut notes = Vec::new();
        std::thread::scope(|scope| {
            let pingers: Vec<_> = (0..self.opts.fairness_sessions)
                .map(|_| scope.spawn(|| self.ping(&phase, &samples)))
                .collect();
            for (i, (name, work)) in phases.iter().enumerate() {
                phase.store(i, Ordering::SeqCst);
                if let Err(e) = work() {
                    notes.push(format!("{name}: {e}"));
                }
            }
            phase.store(STOP, Ordering::SeqCst);
            for p in pingers {
                if let Ok(Err(e)) = p.join() {
                    notes.push(format!("NOOP session: {e}"));
                }
            }
        });
        let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut metrics = Vec::new();
        for (i, (name, _)) in phases.iter().enumerate() {
            let ms = sorted_ms(samples.iter().filter(|(p, _)| *p == i).map(|(_, d)| *d));
            for (label, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
                if let Some(v) = percentile(&ms, p) {
                    metrics.push(Metric::lower(&format!("{name} NOOP {label}"), v, "ms"));
                }
            }
        }
        Ok(self.result("fairness", metrics, notes))
    }

    /// One NOOP session: NOOPs back to back, each timed and filed under the phase it ran in.
    fn ping(
        &self,
        phase: &AtomicUsize,
        samples: &Mutex<Vec<(usize, Duration)>>,
    ) -> Result<(), String> {
        let mut client = self.client().map_err(|e| e.to_string())?;
        let mut mine = Vec::new();
        let deadline = self.deadline();
        while Instant::now() < deadline {
            let p = phase.load(Ordering::SeqCst);
            if p == STOP {
                break;
            }
            // Filed under the phase it started in: a NOOP held up by that phase's work until
            // after it ended counts against that phase.
            let t = Instant::now();
            client.command("NOOP").map_err(|e| e.to_string())?;
            mine.push((p, t.elapsed()));
        }
        let _ = client.quit();
        samples.lock().unwrap_or_else(|e| e.into_inner()).extend(mine);
        Ok(())
    }

    /// Clients that log in to the slow account (an Argon2 hash, say) and leave, at once.
    fn slow_logins(&self, user: &str, pass: &str) -> Result<(), String> {
        let mut url = self.url.clone();
        (url.user, url.password) = (Some(user.to_owned()), Some(pass.to_owned()));
        std::thread::scope(|scope| {
            let clients: Vec<_> = (0..LOGIN_CLIENTS)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..LOGINS {
                            let client = Client::open(&url, &self.opts.client);
                            client.and_then(Client::quit).map_err(|e| e.to_string())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            clients.into_iter().try_for_each(|c| c.join().unwrap_or(Err("panicked".into())))
        })
    }

    fn repeat(
        &self,
        times: usize,
        op: impl Fn(&mut Client) -> Result<(), crate::ftp::FtpError>,
    ) -> Result<(), String> {
        let mut client = self.client().map_err(|e| e.to_string())?;
        for _ in 0..times {
            op(&mut client).map_err(|e| e.to_string())?;
        }
        let _ = client.quit();
        Ok(())
    }

    fn store(&self, path: &str) -> Result<(), String> {
        let mut client = self.client().map_err(|e| e.to_string())?;
        let mut zeros = io::repeat(0).take(self.opts.big_size);
        client.stor(path, 0, &mut zeros, &mut |_| {}).map_err(|e| e.to_string())?;
        let _ = client.dele(path);
        let _ = client.quit();
        Ok(())
    }
}
