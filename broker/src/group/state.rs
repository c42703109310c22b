//! The classic consumer-group protocol, as a state machine.
//!
//! States follow Kafka's group coordinator: `Empty` (no members),
//! `PreparingRebalance` (members are (re)joining), `CompletingRebalance`
//! (joined; waiting for the leader's assignment), `Stable`, `Dead`
//! (deleted). The broker elects the leader, picks the protocol all members
//! support, bumps the generation at each completed join, and relays the
//! leader's assignment; the assignment itself (eager, cooperative, sticky) is
//! the clients' business.
//!
//! No I/O here. JoinGroup and SyncGroup answers that must wait are handed
//! out as oneshot receivers and completed by later steps; the coordinator
//! persists state at the points this module says.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use sluice_protocol::ResponseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka's ListGroups and DescribeGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Coordinator settings (Kafka's `group.*` broker settings).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    pub initial_rebalance_delay: Duration,
    pub members_max: usize,
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// Request version: from v4 a new member first gets MEMBER_ID_REQUIRED.
    pub version: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members and their metadata.
    pub members: Vec<JoinedMember>,
    /// A static leader back in a stable group: it need not assign (KIP-814).
    pub skip_assignment: bool,
}

impl JoinOutcome {
    pub fn error(error: ResponseError, member_id: &str) -> JoinOutcome {
        JoinOutcome {
            error: error.code(),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub fn error(error: ResponseError) -> SyncOutcome {
        SyncOutcome {
            error: error.code(),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

pub enum Step<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// A member as persisted: enough to describe the group after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSnapshot {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
}

/// A group's membership as persisted (Kafka's group metadata record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<MemberSnapshot>,
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// KIP-394: member ids handed out with MEMBER_ID_REQUIRED, until they
    /// join with them (or the deadline passes).
    pending_ids: HashMap<String, Instant>,
    /// When a rebalance in progress completes without the stragglers.
    rebalance_deadline: Option<Instant>,
    /// A first rebalance waits this long for more members (KIP-134).
    initial_delay_until: Option<Instant>,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type: None,
            generation: 0,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending_ids: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
        }
    }

    /// A group as loaded from its log: members must heartbeat (or rejoin)
    /// within their session timeout from now.
    pub fn restore(id: &str, snap: GroupSnapshot, now: Instant) -> Group {
        let mut g = Group::new(id);
        g.protocol_type = snap.protocol_type;
        g.generation = snap.generation;
        g.protocol = snap.protocol;
        g.leader = snap.leader;
        for m in snap.members {
            g.members.insert(
                m.id.clone(),
                Member {
                    id: m.id,
                    instance_id: m.instance_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    session_timeout: Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                    rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms.max(0) as u64),
                    protocols: m.protocols,
                    assignment: m.assignment,
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        g.state = if g.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        g
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| MemberSnapshot {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as i32,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as i32,
                    protocols: m.protocols.clone(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        format!("{client_id}-{}", uuid::Uuid::new_v4())
    }

    fn member_by_instance(&self, instance: &str) -> Option<&str> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance))
            .map(|m| m.id.as_str())
    }

    /// The protocol every member supports that most members list first...
    /// by Kafka's rule: each member votes for its most preferred protocol
    /// among those all members support; the most votes win.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&str> = self
            .members
            .values()
            .next()?
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        candidates.retain(|c| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == c)));
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n.as_str())) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        // Most votes; ties go to the protocol earliest in the first list.
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(**c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|c| c.to_string())
    }

    /// Whether `protocols` share at least one protocol with every member.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(p, _)| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == p)))
    }

    fn prepare_rebalance(&mut self, now: Instant, limits: &GroupLimits) {
        if self.state == GroupState::CompletingRebalance {
            // Assignments of the abandoned generation are void.
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        let was_empty = self.state == GroupState::Empty;
        self.state = GroupState::PreparingRebalance;
        let rebalance_timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + rebalance_timeout);
        if was_empty && !limits.initial_rebalance_delay.is_zero() {
            self.initial_delay_until = Some(now + limits.initial_rebalance_delay.min(rebalance_timeout));
        }
    }

    fn join_answer(&self, member_id: &str) -> JoinOutcome {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinOutcome {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| JoinedMember {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        metadata: m.metadata_for(&protocol),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment: false,
        }
    }

    /// JoinGroup.
    pub fn join(&mut self, req: JoinRequest, now: Instant, limits: &GroupLimits) -> Step<JoinOutcome> {
        let session = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
        if req.session_timeout_ms < 0 || session < limits.session_timeout_min || session > limits.session_timeout_max {
            return Step::Now(JoinOutcome::error(ResponseError::InvalidSessionTimeout, &req.member_id));
        }
        if self.state == GroupState::Dead {
            return Step::Now(JoinOutcome::error(
                ResponseError::CoordinatorNotAvailable,
                &req.member_id,
            ));
        }
        if !self.supports(&req.protocol_type, &req.protocols) {
            return Step::Now(JoinOutcome::error(
                ResponseError::InconsistentGroupProtocol,
                &req.member_id,
            ));
        }
        let rebalance = Duration::from_millis(req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0) as u64);

        let member_id = if req.member_id.is_empty() {
            if let Some(instance) = req.instance_id.as_deref()
                && let Some(old_id) = self.member_by_instance(instance).map(str::to_string)
            {
                // A static member back with a new incarnation: it takes the
                // old member's place; the old id is fenced.
                let new_id = self.new_member_id(&req.client_id);
                let mut member = self.members.remove(&old_id).expect("found by instance");
                if let Some(w) = member.join_waiter.take() {
                    let _ = w.send(JoinOutcome::error(ResponseError::FencedInstanceId, &old_id));
                }
                if let Some(w) = member.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(ResponseError::FencedInstanceId));
                }
                member.id = new_id.clone();
                if self.leader.as_deref() == Some(old_id.as_str()) {
                    self.leader = Some(new_id.clone());
                }
                member.protocols = req.protocols.clone();
                member.session_timeout = session;
                member.rebalance_timeout = rebalance;
                member.last_heartbeat = now;
                self.members.insert(new_id.clone(), member);
                if self.state == GroupState::Stable && self.select_protocol() == self.protocol {
                    // The group's protocol does not change: answer with the
                    // current generation, no rebalance (KIP-345). A leader
                    // gets the members but need not assign (KIP-814).
                    let mut answer = self.join_answer(&new_id);
                    answer.skip_assignment = self.leader.as_deref() == Some(new_id.as_str());
                    return Step::Now(answer);
                }
                new_id
            } else if req.version >= 4 && req.instance_id.is_none() {
                let id = self.new_member_id(&req.client_id);
                self.pending_ids.insert(id.clone(), now + session);
                return Step::Now(JoinOutcome::error(ResponseError::MemberIdRequired, &id));
            } else {
                self.new_member_id(&req.client_id)
            }
        } else {
            let known = self.members.contains_key(&req.member_id);
            if !known && self.pending_ids.remove(&req.member_id).is_none() {
                return Step::Now(JoinOutcome::error(ResponseError::UnknownMemberId, &req.member_id));
            }
            if let Some(instance) = req.instance_id.as_deref()
                && self.member_by_instance(instance).is_some_and(|id| id != req.member_id)
            {
                return Step::Now(JoinOutcome::error(ResponseError::FencedInstanceId, &req.member_id));
            }
            req.member_id.clone()
        };

        if !self.members.contains_key(&member_id) {
            if self.members.len() >= limits.members_max {
                return Step::Now(JoinOutcome::error(ResponseError::GroupMaxSizeReached, &member_id));
            }
            self.members.insert(
                member_id.clone(),
                Member {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    protocols: req.protocols.clone(),
                    assignment: Bytes::new(),
                    last_heartbeat: now,
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
            if self.protocol_type.is_none() {
                self.protocol_type = Some(req.protocol_type.clone());
            }
        } else {
            let member = self.members.get_mut(&member_id).expect("checked");
            let unchanged = member.protocols == req.protocols;
            member.protocols = req.protocols.clone();
            member.session_timeout = session;
            member.rebalance_timeout = rebalance;
            member.last_heartbeat = now;
            let is_leader = self.leader.as_deref() == Some(member_id.as_str());
            match self.state {
                GroupState::CompletingRebalance if unchanged => return Step::Now(self.join_answer(&member_id)),
                GroupState::Stable if unchanged && !is_leader => return Step::Now(self.join_answer(&member_id)),
                _ => {}
            }
        }

        let (tx, rx) = oneshot::channel();
        let member = self.members.get_mut(&member_id).expect("inserted above");
        if let Some(old) = member.join_waiter.replace(tx) {
            let _ = old.send(JoinOutcome::error(ResponseError::UnknownMemberId, &member_id));
        }
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now, limits);
        }
        self.try_complete_join(now);
        Step::Later(rx)
    }

    /// Completes the join phase if every member has rejoined (and the
    /// initial delay passed) or the rebalance deadline passed. Returns true
    /// if it did.
    pub fn try_complete_join(&mut self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let delayed = self.initial_delay_until.is_some_and(|t| now < t);
        let deadline_passed = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !((all_joined && !delayed) || deadline_passed) {
            return false;
        }
        // Members that did not rejoin in time are out.
        let stragglers: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in stragglers {
            self.members.remove(&id);
        }
        self.initial_delay_until = None;
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return true;
        }
        self.protocol = self.select_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let answer = self.join_answer(&id);
            let member = self.members.get_mut(&id).expect("listed");
            member.last_heartbeat = now;
            member.assignment = Bytes::new();
            if let Some(w) = member.join_waiter.take() {
                let _ = w.send(answer);
            }
        }
        true
    }

    fn check_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id
            && let Some(current) = self.member_by_instance(instance)
            && current != member_id
        {
            return Err(ResponseError::FencedInstanceId);
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        Ok(())
    }

    /// SyncGroup. For the leader's sync, the returned flag says the group
    /// must be persisted and then [`finish_sync`](Self::finish_sync)ed.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> (Step<SyncOutcome>, bool) {
        if let Err(e) = self.check_member(member_id, instance_id) {
            return (Step::Now(SyncOutcome::error(e)), false);
        }
        if generation != self.generation {
            return (Step::Now(SyncOutcome::error(ResponseError::IllegalGeneration)), false);
        }
        if protocol_type.is_some_and(|t| Some(t) != self.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != self.protocol.as_deref())
        {
            return (
                Step::Now(SyncOutcome::error(ResponseError::InconsistentGroupProtocol)),
                false,
            );
        }
        match self.state {
            GroupState::PreparingRebalance => {
                (Step::Now(SyncOutcome::error(ResponseError::RebalanceInProgress)), false)
            }
            GroupState::Stable => {
                let m = &self.members[member_id];
                (Step::Now(self.sync_answer(m.assignment.clone())), false)
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let is_leader = self.leader.as_deref() == Some(member_id);
                let member = self.members.get_mut(member_id).expect("checked");
                if let Some(old) = member.sync_waiter.replace(tx) {
                    let _ = old.send(SyncOutcome::error(ResponseError::UnknownMemberId));
                }
                if is_leader {
                    for (id, assignment) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                }
                (Step::Later(rx), is_leader)
            }
            GroupState::Empty | GroupState::Dead => {
                (Step::Now(SyncOutcome::error(ResponseError::UnknownMemberId)), false)
            }
        }
    }

    fn sync_answer(&self, assignment: Bytes) -> SyncOutcome {
        SyncOutcome {
            error: 0,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment,
        }
    }

    /// After the leader's assignment is persisted (`ok`) or failed to be:
    /// the group becomes Stable and every waiting member gets its share, or
    /// everyone must rejoin.
    pub fn finish_sync(&mut self, generation: i32, ok: bool, now: Instant, limits: &GroupLimits) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            return; // superseded by a newer rebalance
        }
        if !ok {
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome::error(ResponseError::CoordinatorNotAvailable));
                }
            }
            self.prepare_rebalance(now, limits);
            return;
        }
        self.state = GroupState::Stable;
        let answers: Vec<(String, SyncOutcome)> = self
            .members
            .values()
            .map(|m| (m.id.clone(), self.sync_answer(m.assignment.clone())))
            .collect();
        for (id, answer) in answers {
            let m = self.members.get_mut(&id).expect("listed");
            m.last_heartbeat = now;
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(answer);
            }
        }
    }

    /// Heartbeat: an error code.
    pub fn heartbeat(&mut self, member_id: &str, instance_id: Option<&str>, generation: i32, now: Instant) -> i16 {
        if let Err(e) = self.check_member(member_id, instance_id) {
            return e.code();
        }
        self.members.get_mut(member_id).expect("checked").last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => ResponseError::RebalanceInProgress.code(),
            _ if generation != self.generation => ResponseError::IllegalGeneration.code(),
            GroupState::Stable | GroupState::CompletingRebalance => 0,
            GroupState::Empty | GroupState::Dead => ResponseError::UnknownMemberId.code(),
        }
    }

    /// LeaveGroup for one member (by id, or by instance id when the id is
    /// empty). Returns an error code and whether the group changed.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        limits: &GroupLimits,
    ) -> (i16, bool) {
        let id = match (member_id.is_empty(), instance_id) {
            (true, Some(instance)) => match self.member_by_instance(instance) {
                Some(id) => id.to_string(),
                None => return (ResponseError::UnknownMemberId.code(), false),
            },
            _ => {
                if let Err(e) = self.check_member(member_id, instance_id) {
                    return (e.code(), false);
                }
                member_id.to_string()
            }
        };
        self.remove_member(&id, now, limits);
        (0, true)
    }

    fn remove_member(&mut self, id: &str, now: Instant, limits: &GroupLimits) {
        let Some(mut m) = self.members.remove(id) else { return };
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(JoinOutcome::error(ResponseError::UnknownMemberId, id));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(SyncOutcome::error(ResponseError::UnknownMemberId));
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(now, limits),
            _ => {}
        }
        self.try_complete_join(now);
    }

    /// Drops members whose session expired and completes rebalances whose
    /// time is up. Returns true if the group changed in a way worth
    /// persisting (it became Empty).
    pub fn tick(&mut self, now: Instant, limits: &GroupLimits) -> bool {
        self.pending_ids.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        let was_empty = self.state == GroupState::Empty;
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "session expired: removing member");
            self.remove_member(id, now, limits);
        }
        self.try_complete_join(now);
        !was_empty && self.state == GroupState::Empty
    }

    /// Marks the group deleted; waiting members are told to find it again.
    pub fn kill(&mut self) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome::error(ResponseError::CoordinatorNotAvailable, &m.id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncOutcome::error(ResponseError::CoordinatorNotAvailable));
            }
        }
        self.members.clear();
        self.state = GroupState::Dead;
    }

    /// Whether `generation`/`member_id` may commit offsets for the group.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() {
            // A simple consumer, outside any group: only while nobody is in it.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_member(member_id, instance_id)?;
        match self.state {
            GroupState::PreparingRebalance | GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ if generation != self.generation => Err(ResponseError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// Topics the members' subscriptions name (consumer protocol), for
    /// OffsetDelete.
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.as_deref()?;
        let mut topics = Vec::new();
        for m in self.members.values() {
            topics.extend(consumer_subscription_topics(&m.metadata_for(protocol))?);
        }
        Some(topics)
    }
}

/// The topics of a consumer protocol subscription (ConsumerProtocolSubscription:
/// version i16, then an array of topic strings).
fn consumer_subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut p = 2usize;
    let count = i32::from_be_bytes(metadata.get(p..p + 4)?.try_into().ok()?);
    p += 4;
    let mut topics = Vec::new();
    for _ in 0..count.max(0) {
        let len = i16::from_be_bytes(metadata.get(p..p + 2)?.try_into().ok()?);
        p += 2;
        let bytes = metadata.get(p..p + len.max(0) as usize)?;
        p += len.max(0) as usize;
        topics.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Some(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> GroupLimits {
        GroupLimits {
            session_timeout_min: Duration::from_millis(100),
            session_timeout_max: Duration::from_secs(60),
            initial_rebalance_delay: Duration::ZERO,
            members_max: 100,
        }
    }

    fn join_req(member_id: &str, version: i16) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 2000,
            protocol_type: "consumer".into(),
            protocols: vec![
                ("range".into(), Bytes::from_static(b"r")),
                ("roundrobin".into(), Bytes::from_static(b"rr")),
            ],
            version,
        }
    }

    fn now_outcome<T>(step: Step<T>) -> T {
        match step {
            Step::Now(t) => t,
            Step::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn later<T>(step: Step<T>) -> oneshot::Receiver<T> {
        match step {
            Step::Later(r) => r,
            Step::Now(_) => panic!("expected to wait"),
        }
    }

    /// Two members join (v4: member id round trip), one is leader, both get
    /// the generation; the leader's sync gives each its assignment.
    #[test]
    fn two_members_join_sync_and_heartbeat() {
        let l = limits();
        let t = Instant::now();
        let mut g = Group::new("g");
        let first = now_outcome(g.join(join_req("", 4), t, &l));
        assert_eq!(first.error, ResponseError::MemberIdRequired.code());
        let a = first.member_id;
        let mut rx_a = later(g.join(join_req(&a, 4), t, &l));
        // A single member that rejoined completes the join at once.
        let joined_a = rx_a.try_recv().unwrap().unwrap();
        assert_eq!((joined_a.generation, joined_a.leader.as_str()), (1, a.as_str()));
        assert_eq!(g.state, GroupState::CompletingRebalance);

        // A second member arrives: a new rebalance; A must rejoin.
        let b = now_outcome(g.join(join_req("", 4), t, &l)).member_id;
        let mut rx_b = later(g.join(join_req(&b, 4), t, &l));
        assert!(rx_b.try_recv().unwrap().is_none(), "B waits for A");
        assert_eq!(g.heartbeat(&a, None, 1, t), ResponseError::RebalanceInProgress.code());
        let mut rx_a = later(g.join(join_req(&a, 4), t, &l));
        let ja = rx_a.try_recv().unwrap().unwrap();
        let jb = rx_b.try_recv().unwrap().unwrap();
        assert_eq!(ja.generation, 2);
        assert_eq!(ja.protocol_name.as_deref(), Some("range"));
        assert_eq!(ja.leader, a, "the old leader stays leader");
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty(), "only the leader learns the members");

        let (step_b, persist_b) = g.sync(&b, None, 2, None, None, vec![]);
        assert!(!persist_b);
        let mut rx_sb = later(step_b);
        let (step_a, persist_a) = g.sync(
            &a,
            None,
            2,
            Some("consumer"),
            Some("range"),
            vec![
                (a.clone(), Bytes::from_static(b"A")),
                (b.clone(), Bytes::from_static(b"B")),
            ],
        );
        assert!(persist_a);
        let mut rx_sa = later(step_a);
        g.finish_sync(2, true, t, &l);
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(rx_sa.try_recv().unwrap().unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(rx_sb.try_recv().unwrap().unwrap().assignment, Bytes::from_static(b"B"));
        assert_eq!(g.heartbeat(&b, None, 2, t), 0);
        assert_eq!(g.heartbeat(&b, None, 1, t), ResponseError::IllegalGeneration.code());
        assert_eq!(g.heartbeat("nobody", None, 2, t), ResponseError::UnknownMemberId.code());
    }

    #[test]
    fn an_expired_session_removes_the_member_and_rebalances() {
        let l = limits();
        let t = Instant::now();
        let mut g = Group::new("g");
        let mut a = later(g.join(join_req("", 3), t, &l));
        let a_id = a.try_recv().unwrap().unwrap().member_id;
        let (s, _) = g.sync(&a_id, None, 1, None, None, vec![(a_id.clone(), Bytes::new())]);
        drop(s);
        g.finish_sync(1, true, t, &l);
        assert_eq!(g.state, GroupState::Stable);
        assert!(!g.tick(t + Duration::from_millis(500), &l));
        assert!(
            g.tick(t + Duration::from_millis(1500), &l),
            "the only member expired: group Empty"
        );
        assert_eq!(g.state, GroupState::Empty);
        assert!(g.members.is_empty());
    }

    #[test]
    fn static_members_are_fenced_by_a_new_incarnation() {
        let l = limits();
        let t = Instant::now();
        let mut g = Group::new("g");
        let mut req = join_req("", 5);
        req.instance_id = Some("inst-1".into());
        let mut first = later(g.join(req.clone(), t, &l));
        let old = first.try_recv().unwrap().unwrap().member_id;
        let (s, _) = g.sync(&old, Some("inst-1"), 1, None, None, vec![]);
        drop(s);
        g.finish_sync(1, true, t, &l);
        // Same instance id, empty member id: takes over.
        let step = g.join(req, t, &l);
        let new = match step {
            Step::Now(o) => o.member_id,
            Step::Later(mut rx) => rx.try_recv().unwrap().unwrap().member_id,
        };
        assert_ne!(new, old);
        assert_eq!(
            g.heartbeat(&old, Some("inst-1"), g.generation, t),
            ResponseError::FencedInstanceId.code()
        );
        assert_eq!(g.members.len(), 1);
    }

    #[test]
    fn commits_check_generation_and_membership() {
        let l = limits();
        let t = Instant::now();
        let mut g = Group::new("g");
        assert!(
            g.check_commit("", None, -1).is_ok(),
            "simple consumers commit to an empty group"
        );
        let mut a = later(g.join(join_req("", 3), t, &l));
        let a_id = a.try_recv().unwrap().unwrap().member_id;
        assert_eq!(g.check_commit(&a_id, None, 1), Err(ResponseError::RebalanceInProgress));
        let (s, _) = g.sync(&a_id, None, 1, None, None, vec![]);
        drop(s);
        g.finish_sync(1, true, t, &l);
        assert!(g.check_commit(&a_id, None, 1).is_ok());
        assert_eq!(g.check_commit(&a_id, None, 0), Err(ResponseError::IllegalGeneration));
        assert_eq!(g.check_commit("x", None, 1), Err(ResponseError::UnknownMemberId));
        assert_eq!(g.check_commit("", None, -1), Err(ResponseError::UnknownMemberId));
    }

    #[test]
    fn protocols_must_be_shared_and_session_timeouts_in_range() {
        let l = limits();
        let t = Instant::now();
        let mut g = Group::new("g");
        let mut bad = join_req("", 3);
        bad.session_timeout_ms = 10;
        assert_eq!(
            now_outcome(g.join(bad, t, &l)).error,
            ResponseError::InvalidSessionTimeout.code()
        );
        let _a = later(g.join(join_req("", 3), t, &l));
        let mut other = join_req("", 3);
        other.protocols = vec![("sticky".into(), Bytes::new())];
        assert_eq!(
            now_outcome(g.join(other, t, &l)).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    #[test]
    fn subscriptions_name_their_topics() {
        // version 0, ["ab", "c"], user data null
        let meta = [0, 0, 0, 0, 0, 2, 0, 2, b'a', b'b', 0, 1, b'c', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            consumer_subscription_topics(&meta),
            Some(vec!["ab".to_string(), "c".to_string()])
        );
        assert_eq!(consumer_subscription_topics(&meta[..5]), None);
    }
}
