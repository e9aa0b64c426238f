//! The order of acknowledgements. Batches are written by several PostgreSQL connections at once
//! and finish in any order, but MQTT 3.1.1 (§ 4.6) has a subscriber send its PUBACKs in the order
//! the PUBLISHes arrived: a finished batch is acknowledged only once every batch that arrived
//! before it is finished too. Pure: the consumer gives each delivery a ticket on arrival and
//! reports it finished; this says which deliveries may be acknowledged now.

use std::collections::VecDeque;

/// A delivery's place in arrival order.
pub type Ticket = u64;

/// Deliveries not yet acknowledged, in arrival order, each finished or not.
#[derive(Debug)]
pub struct AckOrder<D> {
    /// The ticket of `waiting[0]`.
    first: Ticket,
    waiting: VecDeque<(Option<D>, bool)>,
}

impl<D> Default for AckOrder<D> {
    fn default() -> Self {
        AckOrder {
            first: 0,
            waiting: VecDeque::new(),
        }
    }
}

impl<D> AckOrder<D> {
    /// Records a delivery on arrival; its ticket says which one [`AckOrder::finish`] means.
    pub fn arrive(&mut self, delivery: D) -> Ticket {
        self.waiting.push_back((Some(delivery), false));
        self.first + self.waiting.len() as u64 - 1
    }

    /// Marks a delivery finished (its batch committed, or refused for good) and returns, in
    /// arrival order, every delivery that may be acknowledged now. An unknown or repeated ticket
    /// changes nothing.
    pub fn finish(&mut self, ticket: Ticket) -> Vec<D> {
        if let Some(index) = ticket.checked_sub(self.first) {
            if let Some(entry) = self.waiting.get_mut(index as usize) {
                entry.1 = true;
            }
        }
        let mut ready = Vec::new();
        while self.waiting.front().is_some_and(|(_, done)| *done) {
            if let Some((Some(delivery), _)) = self.waiting.pop_front() {
                ready.push(delivery);
            }
            self.first += 1;
        }
        ready
    }

    /// Deliveries arrived and not yet acknowledged (finished or not).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether every delivery has been handed out for acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_follow_arrival_order_whatever_order_batches_finish_in() {
        let mut order = AckOrder::default();
        let tickets: Vec<Ticket> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|d| order.arrive(d))
            .collect();
        assert_eq!(tickets, [0, 1, 2, 3]);
        assert!(order.finish(2).is_empty(), "b and a are not finished");
        assert!(order.finish(1).is_empty(), "a is not finished");
        assert_eq!(order.finish(0), ["a", "b", "c"]);
        assert_eq!(order.len(), 1);
        assert_eq!(order.finish(3), ["d"]);
        assert!(order.is_empty());
        let e = order.arrive("e");
        assert_eq!(e, 4);
        assert_eq!(order.finish(e), ["e"]);
    }

    #[test]
    fn unknown_and_repeated_tickets_change_nothing() {
        let mut order = AckOrder::default();
        let a = order.arrive("a");
        let b = order.arrive("b");
        assert!(order.finish(99).is_empty());
        assert_eq!(order.finish(a), ["a"]);
        assert!(order.finish(a).is_empty(), "already handed out");
        assert_eq!(order.len(), 1);
        assert_eq!(order.finish(b), ["b"]);
    }
}
