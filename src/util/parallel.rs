//! One bounded work queue: items handed out to a fixed number of threads,
//! results back in input order.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::Result;

/// `work` on every item, on at most `threads` threads; the results in input
/// order. After a failure no new item is started (items under way finish),
/// and the first failure in input order is returned.
pub fn map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<U>)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = work(item);
                    let failed = r.is_err();
                    results.lock().expect("results").push((i, r));
                    if failed {
                        next.store(items.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
