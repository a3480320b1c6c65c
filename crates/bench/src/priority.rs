//! Real-time scheduling of the client's threads (`--realtime`).
//!
//! On a busy machine the dispatch lag's tail is the client's threads waking up late: the OS
//! timer fires on time, but the scheduler runs the woken thread only after other runnable
//! threads (a compiler, the server under test) used their slice. Measured on a 2-core machine
//! at load average 6 (Linux 6.18, EEVDF), constant 1000 req/s of 10-token streams, dispatch
//! lag p99: 2.5-24 ms at normal priority, 3.8 ms at nice -10, 4.2 ms with an EEVDF slice of
//! 100 us, 4.2 ms with only the dispatcher thread real-time (then the runtime worker that
//! sends is woken late instead), 0.02 ms with the dispatcher and the runtime workers under
//! SCHED_FIFO. Real-time threads preempt everything else on their CPU (up to the kernel's
//! throttle, 95%), so this is opt-in; it needs root or CAP_SYS_NICE.

/// Lowest real-time priority: above every normal thread, below the kernel's own RT threads.
pub const REALTIME_PRIORITY: i32 = 1;

/// Scheduling the dispatcher thread ran with (reported in `summary.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatcherPriority {
    /// SCHED_FIFO at this priority.
    Realtime(i32),
    /// The OS default; the reason real-time scheduling was not used.
    Normal(String),
}

impl DispatcherPriority {
    pub fn describe(&self) -> String {
        match self {
            DispatcherPriority::Realtime(p) => format!("real-time (SCHED_FIFO {p})"),
            DispatcherPriority::Normal(why) => format!("normal ({why})"),
        }
    }
    pub fn is_realtime(&self) -> bool {
        matches!(self, DispatcherPriority::Realtime(_))
    }
}

/// Put the calling thread under SCHED_FIFO [`REALTIME_PRIORITY`] for good (runtime worker
/// threads, via `on_thread_start`). `Err` says why not.
pub fn set_current_thread_realtime() -> Result<(), String> {
    let mut g = RealtimeGuard::acquire(true);
    #[cfg(target_os = "linux")]
    {
        // Keep the new policy: forget the previous one so drop restores nothing.
        g.previous = None;
    }
    match g.priority() {
        DispatcherPriority::Realtime(_) => Ok(()),
        DispatcherPriority::Normal(why) => Err(why.clone()),
    }
}

/// Raises the calling thread to real-time priority for its lifetime; restores the previous
/// policy on drop (the dispatcher runs on a pooled blocking thread that tokio reuses).
pub struct RealtimeGuard {
    priority: DispatcherPriority,
    #[cfg(target_os = "linux")]
    previous: Option<(libc::c_int, libc::sched_param)>,
}

impl RealtimeGuard {
    /// Try SCHED_FIFO if `enabled`.
    pub fn acquire(enabled: bool) -> RealtimeGuard {
        if !enabled {
            return RealtimeGuard::normal("default; --realtime not given".into());
        }
        Self::acquire_os()
    }

    #[cfg(target_os = "linux")]
    fn acquire_os() -> RealtimeGuard {
        // SAFETY: plain libc calls on the current thread with valid, initialised out-params.
        unsafe {
            let me = libc::pthread_self();
            let mut policy: libc::c_int = 0;
            let mut param: libc::sched_param = std::mem::zeroed();
            if libc::pthread_getschedparam(me, &mut policy, &mut param) != 0 {
                return RealtimeGuard::normal("cannot read the thread's scheduling policy".into());
            }
            let rt = libc::sched_param {
                sched_priority: REALTIME_PRIORITY,
            };
            match libc::pthread_setschedparam(me, libc::SCHED_FIFO, &rt) {
                0 => RealtimeGuard {
                    priority: DispatcherPriority::Realtime(REALTIME_PRIORITY),
                    previous: Some((policy, param)),
                },
                libc::EPERM => RealtimeGuard::normal(
                    "--realtime: SCHED_FIFO not permitted; run as root or grant CAP_SYS_NICE"
                        .into(),
                ),
                e => RealtimeGuard::normal(format!("--realtime: SCHED_FIFO failed, error {e}")),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn acquire_os() -> RealtimeGuard {
        RealtimeGuard::normal("--realtime is only supported on Linux".into())
    }

    fn normal(why: String) -> RealtimeGuard {
        RealtimeGuard {
            priority: DispatcherPriority::Normal(why),
            #[cfg(target_os = "linux")]
            previous: None,
        }
    }

    pub fn priority(&self) -> &DispatcherPriority {
        &self.priority
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some((policy, param)) = self.previous.take() {
            // SAFETY: restores the values read from this same thread in `acquire_os`.
            unsafe {
                libc::pthread_setschedparam(libc::pthread_self(), policy, &param);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_is_normal_and_says_why() {
        let g = RealtimeGuard::acquire(false);
        assert!(!g.priority().is_realtime());
        assert!(g.priority().describe().contains("--realtime not given"));
    }

    #[cfg(target_os = "linux")]
    fn policy() -> libc::c_int {
        // SAFETY: reads the current thread's policy into initialised out-params.
        unsafe {
            let mut p: libc::c_int = -1;
            let mut s: libc::sched_param = std::mem::zeroed();
            assert_eq!(
                libc::pthread_getschedparam(libc::pthread_self(), &mut p, &mut s),
                0
            );
            p
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn guard_restores_the_previous_policy() {
        // On a fresh thread, so the test harness's threads are never touched.
        std::thread::spawn(|| {
            let before = policy();
            {
                let g = RealtimeGuard::acquire(true);
                match g.priority() {
                    DispatcherPriority::Realtime(p) => {
                        assert_eq!(*p, REALTIME_PRIORITY);
                        assert_eq!(policy(), libc::SCHED_FIFO);
                    }
                    // Unprivileged environments: the policy is unchanged and we say why.
                    DispatcherPriority::Normal(why) => {
                        assert!(why.contains("--realtime"), "{why}");
                        assert_eq!(policy(), before);
                    }
                }
            }
            assert_eq!(policy(), before);
        })
        .join()
        .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn set_current_thread_realtime_keeps_the_policy() {
        std::thread::spawn(|| {
            let before = policy();
            match set_current_thread_realtime() {
                Ok(()) => assert_eq!(policy(), libc::SCHED_FIFO),
                Err(_) => assert_eq!(policy(), before),
            }
        })
        .join()
        .unwrap();
    }
}
