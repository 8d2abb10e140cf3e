//! One bounded work queue: an ordered pipeline.
//!
//! A producer on the calling thread hands items to `threads` workers, each
//! with state of its own (made once by `init`: a deflate state, say); the
//! results reach a sink, also on the calling thread, in the producer's order.
//! At most `in_flight` items exist between the producer and the sink (being
//! worked on, or done and waiting for an earlier one), so memory does not
//! grow with the input or with a slow sink. The producer and the sink may
//! share state through a `RefCell` (e.g. buffers the sink hands back).
//!
//! Everything that uses threads to make bytes goes through here: the parallel
//! gzip of the tar.gz binaries, the cpio.gz members, the node loop (`map`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use crate::error::Result;

/// Run `produce` → `work` → `sink` as described in the module documentation,
/// until `produce` returns `None` and every item has reached the sink.
///
/// Work starts in input order. On the first failure (of the producer, a
/// worker or the sink) nothing new is produced or started, items under way
/// finish, and the failure earliest in input order is returned (a producer's
/// failure comes after every item it produced).
pub fn pipeline<T: Send, U: Send, S, E: Send>(
    threads: usize,
    in_flight: usize,
    mut produce: impl FnMut() -> std::result::Result<Option<T>, E>,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, T) -> std::result::Result<U, E> + Sync,
    mut sink: impl FnMut(U) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let in_flight = in_flight.max(1);
    let stop = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::channel::<(usize, T)>();
    let job_rx = Mutex::new(job_rx);
    let (done_tx, done_rx) = mpsc::channel::<(usize, std::result::Result<U, E>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let (done_tx, job_rx, stop, init, work) =
                (done_tx.clone(), &job_rx, &stop, &init, &work);
            scope.spawn(move || {
                let mut state = init();
                loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    // Closed queue: done. Stopped: a failure ends everything.
                    let Ok((seq, item)) = job else { break };
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let result = work(&mut state, item);
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    if done_tx.send((seq, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let (mut produced, mut sunk, mut ended) = (0usize, 0usize, false);
        let mut ready: BTreeMap<usize, U> = BTreeMap::new();
        let mut failed: Option<(usize, E)> = None;
        'run: loop {
            while !ended && produced - sunk < in_flight {
                match produce() {
                    Ok(Some(item)) => {
                        // The queue's receiver lives as long as this scope: cannot fail.
                        job_tx.send((produced, item)).expect("job queue");
                        produced += 1;
                    }
                    Ok(None) => ended = true,
                    Err(e) => {
                        failed = Some((produced, e));
                        break 'run;
                    }
                }
            }
            if sunk == produced {
                break;
            }
            // Every worker gone (a panic, which the scope passes on): stop here.
            let Ok((seq, result)) = done_rx.recv() else {
                break;
            };
            match result {
                Ok(u) => ready.insert(seq, u),
                Err(e) => {
                    failed = Some((seq, e));
                    break 'run;
                }
            };
            while let Some(u) = ready.remove(&sunk) {
                if let Err(e) = sink(u) {
                    failed = Some((sunk, e));
                    break 'run;
                }
                sunk += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(job_tx);
        let Some((mut first, mut err)) = failed else {
            return Ok(());
        };
        // Items started before the failure finish; one of them may have failed earlier in order.
        for (seq, result) in done_rx.iter() {
            if let Err(e) = result
                && seq < first
            {
                (first, err) = (seq, e);
            }
        }
        Err(err)
    })
}

/// `work` on every item, on at most `threads` threads; the results in input
/// order. After a failure no new item is started (items under way finish),
/// and the first failure in input order is returned.
pub fn map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let mut next = items.iter();
    let mut results = Vec::with_capacity(items.len());
    pipeline(
        threads.clamp(1, items.len().max(1)),
        // Results are small: no bound beyond the item count.
        items.len(),
        || Ok(next.next()),
        || (),
        |(), item| work(item),
        |u| {
            results.push(u);
            Ok(())
        },
    )?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn results_keep_input_order_and_the_first_error_wins() {
        let items: Vec<u32> = (0..50).collect();
        let doubled = map(&items, 4, |i| Ok(i * 2)).unwrap();
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let err = map(&items, 3, |i| {
            if *i >= 10 {
                Err(crate::Error::input(format!("item {i}")))
            } else {
                Ok(*i)
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "item 10");
        assert!(map(&[] as &[u32], 4, |i| Ok(*i)).unwrap().is_empty());
    }

    /// Later items finishing first still reach the sink in order, and no more
    /// than `in_flight` items are ever between the producer and the sink.
    #[test]
    fn ordered_and_bounded_with_per_thread_state() {
        let (produced, sunk) = (Cell::new(0usize), Cell::new(0usize));
        let peak = Cell::new(0usize);
        let inits = AtomicUsize::new(0);
        let mut out = Vec::new();
        pipeline(
            4,
            6,
            || {
                let i = produced.get();
                if i == 100 {
                    return Ok::<_, String>(None);
                }
                produced.set(i + 1);
                peak.set(peak.get().max(produced.get() - sunk.get()));
                Ok(Some(i))
            },
            || {
                inits.fetch_add(1, Ordering::Relaxed);
                0usize
            },
            |count, i| {
                *count += 1;
                // Early items are slow: later ones overtake them.
                std::thread::sleep(Duration::from_micros(((100 - i) % 7 * 200) as u64));
                Ok(i * 3)
            },
            |u| {
                sunk.set(sunk.get() + 1);
                out.push(u);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (0..100).map(|i| i * 3).collect::<Vec<_>>());
        assert!(peak.get() <= 6, "{} in flight", peak.get());
        assert_eq!(inits.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_failure_anywhere_stops_everything() {
        let run =
            |fail_produce: Option<usize>, fail_work: Option<usize>, fail_sink: Option<usize>| {
                let mut next = 0usize;
                let started = AtomicUsize::new(0);
                let r = pipeline(
                    2,
                    4,
                    || {
                        if Some(next) == fail_produce {
                            return Err(format!("produce {next}"));
                        }
                        next += 1;
                        Ok((next <= 1000).then_some(next - 1))
                    },
                    || (),
                    |(), i| {
                        started.fetch_add(1, Ordering::Relaxed);
                        // Every item from `fail_work` on fails: the first in order wins.
                        if fail_work.is_some_and(|n| i >= n) {
                            return Err(format!("work {i}"));
                        }
                        Ok(i)
                    },
                    |i| {
                        if Some(i) == fail_sink {
                            return Err(format!("sink {i}"));
                        }
                        Ok(())
                    },
                );
                (r, started.into_inner())
            };
        assert_eq!(run(None, None, None), (Ok(()), 1000));
        for (case, expected) in [
            ((Some(7), None, None), "produce 7"),
            ((None, Some(7), None), "work 7"),
            ((None, None, Some(7)), "sink 7"),
        ] {
            let (r, started) = run(case.0, case.1, case.2);
            assert_eq!(r.unwrap_err(), expected);
            assert!(started < 20, "{started} items started after a failure at 7");
        }
    }
}
