//! The MQTT source's rules, as a state machine without I/O: which PUBLISHes become deliveries,
//! and when which PUBACK goes out.
//!
//! [`Admission`] takes [`Event`]s — a connection up (with or without a stored session), a
//! PUBLISH received, the store's recent identities loaded, room in the pipeline, a delivery's
//! commit acknowledged by the pipeline, a PUBACK written, the connection lost, the pipeline
//! closed, the source stopping — and queues [`Action`]s for its shell (`super`) to carry out:
//! subscribe, load the recent identities, hand a delivery to the pipeline (a message, an
//! oversized message to dead-letter, or only the identity of a copy already committed), send a
//! PUBACK, disconnect to shed load, disconnect to close. It knows neither tokio nor rumqttc nor
//! the store, and reads no clock: a PUBLISH arrives with its receive time.
//!
//! **Invariants.**
//! - *Acknowledge after commit.* A PUBACK for a delivery is queued only after the pipeline gave
//!   back its [`Ticket`] ([`Event::Acknowledged`]), which it does once the commit of everything
//!   derived from the delivery, its identity included, is durable.
//! - *Once, in order.* Deliveries are settled in the order they were handed to the pipeline,
//!   which on each connection is the order their PUBLISHes arrived in; each is settled once. An
//!   acknowledgement that arrives ahead of an earlier delivery's waits for it.
//! - *Never across a connection.* A delivery's PUBACK goes out only while the connection its
//!   PUBLISH came on is up. After a reconnect a packet id may name another message (ids repeat
//!   when a broker has more than 65 535 messages in flight, and mosquitto applies a PUBACK to the
//!   oldest message in flight with that id), so a delivery owed on a lost connection is settled
//!   without one: the broker sends it again, and its identity, committed, is remembered for when
//!   the copy arrives. The shell's part: PUBACKs not yet written when a connection fails are
//!   dropped (rumqttc does), and no PUBLISH of a lost connection is reported after the next
//!   [`Event::Connected`] (`super::events`).
//! - *No double processing.* A QoS 1 PUBLISH sent again (DUP) whose identity is still in the
//!   pipeline or among the recently committed is handed over without its message: the pipeline
//!   commits its identity again (so it stays recent while the broker keeps sending it) and it is
//!   acknowledged after that commit, in its own connection's order. An identity is the packet id
//!   and a digest of topic and payload ([`identity`]), so a recycled packet id is not taken for
//!   an older message; two messages alike in all three within the horizon are taken for one.
//! - *The dedup horizon.* The store keeps the newest [`Limits::dedup_horizon`] committed
//!   identities of the source. It must cover every committed delivery the broker may still send
//!   again — those whose PUBACK is waiting in the pipeline's batches, in the queue to the source,
//!   in the client, or was written but never read by a broker that lost the connection — so it
//!   is [`horizon`] of those bounds, and at least [`MIN_DEDUP_HORIZON`]. The recent identities
//!   are loaded once per connection, at the first copy that is not in the pipeline
//!   ([`Action::LoadRecent`]), and grow by every delivery settled without a PUBACK.
//! - *Shedding.* Messages wait in a held queue until the pipeline has room. Only a broker that
//!   ignores its in-flight limit fills it (mosquitto before 2.0.13 lets a whole queue into
//!   flight). When a message would take it beyond [`Limits::held_messages`] or
//!   [`Limits::held_bytes`] (one message always fits), the source is *saturated*: that message
//!   and what else arrives on that connection are ignored — neither held nor
//!   acknowledged — while everything held is processed and acknowledged on the connection it came
//!   on. When the last of it is settled, the source disconnects ([`Action::Shed`], behind those
//!   PUBACKs) if it ignored a QoS 1 message, so that the broker sends the ignored ones again
//!   (persistent session); else it takes messages again. Each round thus commits a whole held
//!   queue, and leaves no delivery owed on the lost connection to be recognised as a copy later.
//!   Ignored messages are never older than an acknowledged one of their connection, so a PUBACK
//!   for a recycled packet id still names the oldest message in flight with it.
//! - *Bounded memory.* The held queue stays within its limits (or holds one message) and never
//!   outlives its connection;
//!   at most [`Limits::owed_acks`] PUBACKs wait in the client ([`Admission::takes_acks`] is how
//!   the shell stops taking acknowledgements from the pipeline, which then waits); deliveries
//!   owed an acknowledgement are at most what the pipeline holds plus what it acknowledged and
//!   this machine has not settled yet.
//!
//! `tests.rs` checks the rules one at a time; `model.rs` checks them together, against a model
//! of broker, connection, pipeline, store and crashes, under random scripts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::batch::{Message, Nanos};
use crate::source::Oversized;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

/// Messages, and payload bytes, held (not yet taken by the pipeline) at which the source is
/// saturated: it ignores what else arrives until it has settled them, then reconnects.
const HELD_MESSAGES: usize = 100_000;
const HELD_BYTES: u64 = 64 * 1024 * 1024;
/// Fewest PUBACKs that may wait in each of the two queues (to the source, in the client) before
/// the pipeline waits; the bound is twice the broker's in-flight limit when that is larger.
const MIN_OWED_ACKS: usize = 256;
/// Fewest recent committed deliveries kept per source to recognise redeliveries: besides the
/// queues and the pipeline's batches, a broker that loses the connection discards the PUBACKs
/// it had not read yet, and the socket buffers can hold thousands.
pub(crate) const MIN_DEDUP_HORIZON: usize = 32_768;

/// The bounds the machine keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Held messages at which the source is saturated.
    pub(crate) held_messages: usize,
    /// Held payload bytes at which the source is saturated.
    pub(crate) held_bytes: u64,
    /// Most PUBACKs waiting in the client; also the capacity of the queue of acknowledgements
    /// from the pipeline.
    pub(crate) owed_acks: usize,
    /// Larger messages are dead-lettered (a prefix) instead of decoded.
    pub(crate) max_message_size: u64,
    /// Committed identities the store keeps for this source.
    pub(crate) dedup_horizon: u32,
}

impl Limits {
    /// The limits of a source whose broker keeps `max_inflight` QoS 1 messages in flight and
    /// whose pipeline holds at most `held_by_pipeline` deliveries (its queue and batches).
    pub(crate) fn new(max_inflight: usize, held_by_pipeline: usize, max_message_size: u64) -> Self {
        let owed_acks = (2 * max_inflight).max(MIN_OWED_ACKS);
        let dedup_horizon = horizon(owed_acks, held_by_pipeline).max(MIN_DEDUP_HORIZON);
        Self {
            held_messages: HELD_MESSAGES,
            held_bytes: HELD_BYTES,
            owed_acks,
            max_message_size,
            dedup_horizon: u32::try_from(dedup_horizon).unwrap_or(u32::MAX),
        }
    }
}

/// The horizon rule: the committed deliveries whose PUBACK may not have reached the broker —
/// both acknowledgement queues (`owed_acks` each) and what the pipeline holds.
pub(crate) fn horizon(owed_acks: usize, held_by_pipeline: usize) -> usize {
    2 * owed_acks + held_by_pipeline
}

/// The identity of a QoS 1 delivery: its packet id and a digest of its topic and payload. The
/// store keeps these bytes; they must not change.
pub(crate) fn identity(pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let digest = Sha256::new().chain_update(topic.as_bytes()).chain_update([0]).chain_update(payload).finalize();
    let mut identity = pkid.to_be_bytes().to_vec();
    identity.extend_from_slice(&digest[..16]);
    identity
}

/// A PUBLISH as the machine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Publish {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: PublishQos,
    /// When the source read it.
    pub(crate) received_at: Nanos,
}

/// How a PUBLISH is to be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishQos {
    /// Nothing to acknowledge.
    AtMostOnce,
    /// A PUBACK with its packet id; `dup` when the broker sends it again.
    AtLeastOnce { pkid: u16, dup: bool },
}

/// Names a delivery whose acknowledgement is owed; the pipeline gives it back after the commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket(u64);

/// What a delivery carries into the pipeline.
#[derive(Debug)]
pub(crate) enum Content {
    /// A message to process.
    Message(Message),
    /// A message over [`Limits::max_message_size`], to dead-letter.
    Oversized(Oversized),
    /// A copy of a message committed or on its way: only its identity is committed again.
    Copy,
}

/// The acknowledgement a delivery is owed.
#[derive(Debug)]
pub(crate) struct Owed {
    /// Given back by [`Event::Acknowledged`] once the delivery is committed.
    pub(crate) ticket: Ticket,
    /// Committed with the delivery's data.
    pub(crate) identity: Vec<u8>,
}

/// A delivery for the pipeline.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) content: Content,
    /// `None` at most once.
    pub(crate) owed: Option<Owed>,
}

/// What happens to the source.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection is up; without a stored session the broker forgot the subscriptions.
    Connected { session_present: bool },
    /// A PUBLISH arrived on the current connection.
    Publish(Publish),
    /// The answer to [`Action::LoadRecent`]: the source's newest committed identities, `None`
    /// when they cannot be read.
    RecentLoaded(Option<HashSet<Vec<u8>>>),
    /// The pipeline has room for one delivery.
    PipelineReady,
    /// The pipeline committed a delivery, durably.
    Acknowledged(Ticket),
    /// A PUBACK left the client: written to the connection, or refused by the client.
    PubAckWritten,
    /// The connection failed or was closed.
    ConnectionLost,
    /// The pipeline takes no more deliveries (intake stopped, or its channel closed).
    PipelineClosed,
    /// The source is closing, after the pipeline's last acknowledgements.
    Stop,
}

/// What the shell is to do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Subscribe to the pipeline's filters.
    Subscribe,
    /// Load the recent committed identities, answer with [`Event::RecentLoaded`], then hand
    /// `0` in again as [`Event::Publish`].
    LoadRecent(Publish),
    /// Hand this delivery to the pipeline (which has room: it follows [`Event::PipelineReady`]).
    Deliver(Handover),
    /// Send a PUBACK on the current connection.
    PubAck { pkid: u16 },
    /// Disconnect (behind the PUBACKs already queued) so that the broker sends again the
    /// `ignored` messages (of which some QoS 1) that arrived while the held queue was full.
    Shed { ignored: usize },
    /// Disconnect, closing the source.
    Disconnect,
}

/// A message received and not yet handed to the pipeline.
#[derive(Debug)]
struct Held {
    content: Content,
    /// Packet id and identity (QoS 1).
    owed: Option<(u16, Vec<u8>)>,
    bytes: u64,
}

/// A delivery in the pipeline, owed an acknowledgement.
#[derive(Debug)]
struct InPipeline {
    /// The connection its PUBLISH came on.
    connection: u64,
    pkid: u16,
    identity: Vec<u8>,
    /// Committed; waiting for earlier deliveries, or for room in the client.
    acknowledged: bool,
}

/// Messages ignored on a saturated connection.
#[derive(Clone, Copy, Debug, Default)]
struct Ignored {
    all: usize,
    /// QoS 1 ones: the broker sends those again after a reconnect.
    owed: usize,
}

/// The recent committed identities, as far as this connection knows them.
#[derive(Debug)]
enum Recent {
    /// Not loaded since the connection came up.
    Unknown,
    Loaded(HashSet<Vec<u8>>),
    /// The last load failed: the next copy is processed (a duplicate at worst, never a loss)
    /// and the one after loads again.
    Unreadable,
}

/// The MQTT source's admission and acknowledgement state (see the module doc).
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    /// Numbers the connections; 0 before the first.
    connection: u64,
    connected: bool,
    /// False once the pipeline takes no more.
    admitting: bool,
    /// Saturation on this connection: `Some(ignored)` once the held queue was full, counting
    /// the messages ignored since.
    saturated: Option<Ignored>,
    /// Set by [`Action::Shed`] until the next connection.
    shedding: bool,
    held: VecDeque<Held>,
    held_bytes: u64,
    next_ticket: u64,
    /// Deliveries owed an acknowledgement, in hand-over order.
    in_pipeline: BTreeMap<Ticket, InPipeline>,
    /// How many deliveries in `in_pipeline` carry each identity.
    copies: HashMap<Vec<u8>, usize>,
    recent: Recent,
    /// PUBACKs queued in the client and not yet written.
    pubacks_in_client: usize,
    actions: VecDeque<Action>,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            connection: 0,
            connected: false,
            admitting: true,
            saturated: None,
            shedding: false,
            held: VecDeque::new(),
            held_bytes: 0,
            next_ticket: 0,
            in_pipeline: BTreeMap::new(),
            copies: HashMap::new(),
            recent: Recent::Unknown,
            pubacks_in_client: 0,
            actions: VecDeque::new(),
        }
    }

    /// Takes one event; its actions wait in [`Self::poll_action`].
    pub(crate) fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { session_present } => self.connected(session_present),
            Event::Publish(publish) => self.publish(publish),
            Event::RecentLoaded(Some(identities)) => self.recent = Recent::Loaded(identities),
            Event::RecentLoaded(None) => self.recent = Recent::Unreadable,
            Event::PipelineReady => self.hand_over(),
            Event::Acknowledged(ticket) => {
                if let Some(delivery) = self.in_pipeline.get_mut(&ticket) {
                    delivery.acknowledged = true;
                }
                self.settle();
            }
            Event::PubAckWritten => {
                self.pubacks_in_client = self.pubacks_in_client.saturating_sub(1);
                self.settle();
            }
            Event::ConnectionLost => {
                // rumqttc drops the PUBACKs it had not written; the broker sends those messages
                // again, and those held here.
                self.connected = false;
                self.pubacks_in_client = 0;
                self.discard_held();
                self.settle();
            }
            Event::PipelineClosed => {
                // Held messages were never acknowledged: the broker sends them again next session.
                self.admitting = false;
                self.discard_held();
            }
            Event::Stop => {
                self.admitting = false;
                self.discard_held();
                self.actions.push_back(Action::Disconnect);
            }
        }
    }

    /// The next action to carry out, in order.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// True while the client has room for another PUBACK: the shell takes acknowledgements from
    /// the pipeline only then.
    pub(crate) fn takes_acks(&self) -> bool {
        self.pubacks_in_client < self.limits.owed_acks
    }

    /// True when a delivery waits for room in the pipeline.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// True after [`Action::Shed`], until the next connection.
    pub(crate) fn is_shedding(&self) -> bool {
        self.shedding
    }

    /// True while the held queue was full on this connection: what arrives is ignored.
    #[cfg(test)]
    fn is_saturated(&self) -> bool {
        self.saturated.is_some()
    }

    /// Messages held, their payload bytes, deliveries owed an acknowledgement, and PUBACKs in
    /// the client.
    #[cfg(test)]
    fn footprint(&self) -> (usize, u64, usize, usize) {
        (self.held.len(), self.held_bytes, self.in_pipeline.len(), self.pubacks_in_client)
    }

    fn connected(&mut self, session_present: bool) {
        self.connection += 1;
        self.connected = true;
        self.saturated = None;
        self.shedding = false;
        // A new connection may send again anything committed before it.
        self.recent = Recent::Unknown;
        if !session_present {
            self.actions.push_back(Action::Subscribe);
        }
    }

    fn publish(&mut self, publish: Publish) {
        if !self.admitting || self.shedding || !self.connected {
            // Not acknowledged: the broker sends it again.
            return;
        }
        if let Some(ignored) = &mut self.saturated {
            ignored.all += 1;
            ignored.owed += usize::from(publish.qos != PublishQos::AtMostOnce);
            return;
        }
        let owed = match publish.qos {
            PublishQos::AtMostOnce => None,
            PublishQos::AtLeastOnce { pkid, dup } => {
                let identity = identity(pkid, &publish.topic, &publish.payload);
                let copy = dup
                    && (self.copies.contains_key(&identity)
                        || match &self.recent {
                            Recent::Unknown => {
                                self.actions.push_back(Action::LoadRecent(publish));
                                return;
                            }
                            Recent::Loaded(identities) => identities.contains(&identity),
                            Recent::Unreadable => {
                                self.recent = Recent::Unknown;
                                false
                            }
                        });
                Some((pkid, identity, copy))
            }
        };
        let copy = owed.as_ref().is_some_and(|(_, _, copy)| *copy);
        let content = if copy {
            // Sent again on this connection while its original is on its way (whose PUBACK, owed
            // on an earlier connection, goes nowhere) or after it was committed: commit the
            // identity again behind the original, then acknowledge, in this connection's order.
            Content::Copy
        } else {
            let message = Message { topic: publish.topic, payload: publish.payload, received_at: publish.received_at };
            if message.payload.len() as u64 > self.limits.max_message_size {
                // Only a prefix is kept; the rest is freed at once.
                Content::Oversized(Oversized::of(&message, self.limits.max_message_size))
            } else {
                Content::Message(message)
            }
        };
        let bytes = match &content {
            Content::Message(message) => message.payload.len() as u64,
            Content::Oversized(oversized) => oversized.prefix.payload.len() as u64,
            Content::Copy => 0,
        };
        let full = self.held.len() >= self.limits.held_messages || self.held_bytes + bytes > self.limits.held_bytes;
        if full && !self.held.is_empty() {
            self.saturated = Some(Ignored { all: 1, owed: usize::from(owed.is_some()) });
            return;
        }
        self.held.push_back(Held { content, owed: owed.map(|(pkid, identity, _)| (pkid, identity)), bytes });
        self.held_bytes += bytes;
    }

    fn hand_over(&mut self) {
        let Some(held) = self.held.pop_front() else { return };
        self.held_bytes -= held.bytes;
        let owed = held.owed.map(|(pkid, identity)| {
            let ticket = Ticket(self.next_ticket);
            self.next_ticket += 1;
            *self.copies.entry(identity.clone()).or_default() += 1;
            let delivery =
                InPipeline { connection: self.connection, pkid, identity: identity.clone(), acknowledged: false };
            self.in_pipeline.insert(ticket, delivery);
            Owed { ticket, identity }
        });
        self.actions.push_back(Action::Deliver(Handover { content: held.content, owed }));
        self.end_saturation();
    }

    /// Ends a saturation once everything held on the connection is settled: a disconnect if the
    /// broker is to send ignored messages again, else taking messages again.
    fn end_saturation(&mut self) {
        let Some(ignored) = self.saturated else { return };
        if !self.admitting {
            // Closing: nothing is taken again, so nothing to reconnect for.
            self.saturated = None;
            return;
        }
        // Tickets grow with connections: this connection's deliveries are the newest.
        let owed_here = self.in_pipeline.last_key_value().is_some_and(|(_, d)| d.connection == self.connection);
        if !self.held.is_empty() || owed_here {
            return;
        }
        self.saturated = None;
        if ignored.owed > 0 {
            self.actions.push_back(Action::Shed { ignored: ignored.all });
            self.shedding = true;
        }
    }

    /// Settles acknowledged deliveries from the oldest on, while the oldest is acknowledged and
    /// its PUBACK, if it gets one, has room in the client.
    fn settle(&mut self) {
        while let Some(oldest) = self.in_pipeline.first_entry() {
            let delivery = oldest.get();
            let owed_here = self.connected && delivery.connection == self.connection;
            if !delivery.acknowledged || (owed_here && self.pubacks_in_client >= self.limits.owed_acks) {
                break;
            }
            let delivery = oldest.remove();
            if let Some(count) = self.copies.get_mut(&delivery.identity) {
                *count -= 1;
                if *count == 0 {
                    self.copies.remove(&delivery.identity);
                }
            }
            if owed_here {
                self.pubacks_in_client += 1;
                self.actions.push_back(Action::PubAck { pkid: delivery.pkid });
            } else if let Recent::Loaded(identities) = &mut self.recent {
                // Committed; the broker sends it again on this connection.
                identities.insert(delivery.identity);
            }
        }
        if self.connected {
            self.end_saturation();
        }
    }

    fn discard_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }
}
