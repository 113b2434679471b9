//! Connections not yet authenticated ("strangers"). A process holds at most
//! [`UNAUTHENTICATED_CONNECTIONS`] of them, each for at most [`STRANGER_DEADLINE`]; a newcomer is
//! never turned away for lack of a place. When all places are taken, the oldest stranger from the
//! address that holds the most places loses its own: a flood of silent connections pushes out
//! only itself and its like, while a token holder, which says its hello within a round trip of
//! its handshake, gets in. Once half the places are taken, a peer whose address QUIC has not
//! validated is asked to retry first, so the address a place counts against is one the peer
//! really answers at.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// Connections that may be in their handshake or hello at once, per process.
pub const UNAUTHENTICATED_CONNECTIONS: usize = 32;

/// How long a connection has from its first packet to its hello (or, at a node's peer port, its
/// first request with the token): a handshake and a message, with room for a loaded machine.
pub const STRANGER_DEADLINE: Duration = Duration::from_secs(3);

/// The rule, without clocks or channels: who holds the places, and who loses one.
#[derive(Debug, Default)]
struct Places {
    next: u64,
    /// Places by age (ids grow), with the address each counts against.
    held: BTreeMap<u64, IpAddr>,
}

impl Places {
    /// Takes a place for a connection from `from`; when `capacity` are taken, first frees the
    /// place returned second.
    fn enter(&mut self, from: IpAddr, capacity: usize) -> (u64, Option<u64>) {
        let evicted = if self.held.len() >= capacity { self.victim() } else { None };
        if let Some(victim) = evicted {
            self.held.remove(&victim);
        }
        let id = self.next;
        self.next += 1;
        self.held.insert(id, from);
        (id, evicted)
    }

    /// The oldest place of the address holding the most (the older address on a tie).
    fn victim(&self) -> Option<u64> {
        let mut by_address: HashMap<IpAddr, (usize, u64)> = HashMap::new();
        for (&id, &from) in &self.held {
            by_address.entry(from).or_insert((0, id)).0 += 1;
        }
        by_address.into_values().max_by_key(|&(count, oldest)| (count, std::cmp::Reverse(oldest))).map(|(_, id)| id)
    }

    fn leave(&mut self, id: u64) {
        self.held.remove(&id);
    }
}

#[derive(Debug, Default)]
struct Registry {
    places: Places,
    evict: HashMap<u64, oneshot::Sender<()>>,
}

/// The strangers of one listening endpoint.
#[derive(Debug, Clone, Default)]
pub struct Strangers(Arc<Mutex<Registry>>);

/// Why a stranger's time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lapsed {
    /// A newer stranger needed the place.
    #[error("evicted: too many connections had not said hello, and this one was the oldest")]
    Evicted,
    /// The deadline passed.
    #[error("no hello within {}", humantime::format_duration(STRANGER_DEADLINE))]
    Late,
}

/// A stranger's place; given up when dropped (on admission, or when the connection ends).
#[derive(Debug)]
pub struct Place {
    id: u64,
    registry: Arc<Mutex<Registry>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.places.leave(self.id);
        registry.evict.remove(&self.id);
    }
}

/// Completes when a stranger loses its place or runs out of time.
#[derive(Debug)]
pub struct Lapse {
    evicted: Option<oneshot::Receiver<()>>,
    deadline: tokio::time::Instant,
}

impl Lapse {
    /// Waits for the eviction or the deadline. A stranger whose place was given up (admitted) is
    /// never evicted, but its deadline still comes: wait on this only before admission.
    pub async fn wait(&mut self) -> Lapsed {
        let deadline = tokio::time::sleep_until(self.deadline);
        let Some(evicted) = self.evicted.as_mut() else {
            deadline.await;
            return Lapsed::Late;
        };
        tokio::select! {
            sent = evicted => {
                // A receiver is polled to its end once; later waits watch only the deadline.
                self.evicted = None;
                match sent {
                    Ok(()) => Lapsed::Evicted,
                    Err(_) => {
                        tokio::time::sleep_until(self.deadline).await;
                        Lapsed::Late
                    }
                }
            },
            () = deadline => Lapsed::Late,
        }
    }
}

impl Strangers {
    /// A place for a connection from `from`, evicting the oldest stranger of the address holding
    /// the most places when all are taken.
    pub fn enter(&self, from: IpAddr) -> (Place, Lapse) {
        let (tx, evicted) = oneshot::channel();
        let mut registry = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (id, victim) = registry.places.enter(from, UNAUTHENTICATED_CONNECTIONS);
        if let Some(victim) = victim.and_then(|v| registry.evict.remove(&v)) {
            let _ = victim.send(());
        }
        registry.evict.insert(id, tx);
        let deadline = tokio::time::Instant::now() + STRANGER_DEADLINE;
        (Place { id, registry: self.0.clone() }, Lapse { evicted: Some(evicted), deadline })
    }

    /// Whether so many places are taken that an unvalidated address should retry first.
    pub fn crowded(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).places.held.len() >= UNAUTHENTICATED_CONNECTIONS / 2
    }

    /// Admits `incoming` as a stranger: asks for a QUIC retry when crowded and the address is not
    /// validated yet (`None`: the retry was sent), else gives it a place.
    pub fn admit(&self, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Place, Lapse)> {
        if self.crowded() && !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            return None;
        }
        let (place, lapse) = self.enter(incoming.remote_address().ip());
        Some((incoming, place, lapse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn places_are_free_until_the_capacity() {
        let mut places = Places::default();
        for n in 0..4 {
            assert_eq!(places.enter(ip(1), 4), (n, None));
        }
        assert_eq!(places.enter(ip(1), 4), (4, Some(0)), "the oldest goes");
    }

    #[test]
    fn the_flooding_address_loses_its_oldest_not_the_lone_caller() {
        let mut places = Places::default();
        let (caller, _) = places.enter(ip(9), 4);
        for _ in 0..3 {
            places.enter(ip(1), 4);
        }
        for _ in 0..100 {
            let (_, evicted) = places.enter(ip(1), 4);
            assert_ne!(evicted, Some(caller), "a lone caller outlasts a flood from another address");
        }
        assert!(places.held.contains_key(&caller));
        assert_eq!(places.held.len(), 4);
    }

    #[test]
    fn a_place_left_is_free_again() {
        let mut places = Places::default();
        let (a, _) = places.enter(ip(1), 2);
        places.enter(ip(1), 2);
        places.leave(a);
        assert_eq!(places.enter(ip(2), 2).1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_stranger_hears_of_it_and_a_slow_one_runs_late() {
        let strangers = Strangers::default();
        let (_first, mut first) = strangers.enter(ip(1));
        let mut rest: Vec<_> = (1..UNAUTHENTICATED_CONNECTIONS).map(|_| strangers.enter(ip(1))).collect();
        assert!(strangers.crowded());
        let _newcomer = strangers.enter(ip(1));
        assert_eq!(first.wait().await, Lapsed::Evicted);
        let (_, lapse) = &mut rest[0];
        let started = tokio::time::Instant::now();
        assert_eq!(lapse.wait().await, Lapsed::Late);
        assert_eq!(started.elapsed(), STRANGER_DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_admitted_stranger_is_never_evicted() {
        let strangers = Strangers::default();
        let (place, mut lapse) = strangers.enter(ip(1));
        drop(place);
        let _others: Vec<_> = (0..2 * UNAUTHENTICATED_CONNECTIONS).map(|_| strangers.enter(ip(1))).collect();
        assert_eq!(lapse.wait().await, Lapsed::Late, "only the deadline, which an admitted caller ignores");
        assert_eq!(lapse.wait().await, Lapsed::Late, "a second wait after the first is still only the deadline");
    }
}
