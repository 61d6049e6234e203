//! The simulation's events: what can happen at a point in simulated time, and the names
//! `SwarmStats::events_by_kind` counts them under.

/// Something that happens at a point in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ev {
    Join(u32),
    Leave(u32),
    /// A task's housekeeping tick: swarm size to the scheduler, a provider lookup when due.
    Tick(u32),
    LookupDone(u32),
    /// A task short of sessions looks up providers again (see `Swarm::relookup`).
    Relookup(u32),
    /// An origin server's send limit is reconsidered (`flotilla_protocol::send_limit`).
    OriginPeriod(u32),
    /// The gateway's count of nodes pulling the task's layer arrives.
    SwarmCount {
        task: u32,
        nodes: u32,
        /// No transfer of the layer had started at the origin (the gateway's `unsent`).
        unsent: bool,
    },
    /// A session from `task` to host `peer` is established (or fails).
    Open {
        task: u32,
        peer: u32,
    },
    /// The task's host becomes findable as a provider of its blob.
    Announce(u32),
    PeerRequest {
        stream: u32,
        piece: u32,
    },
    PeerCancel {
        stream: u32,
        piece: u32,
    },
    OriginRequest {
        task: u32,
        piece: u32,
    },
    /// The origin server gets to a queued request.
    OriginAdmit {
        task: u32,
        piece: u32,
    },
    OriginCancel {
        task: u32,
        piece: u32,
    },
    FlowEnd {
        flow: u32,
        version: u32,
    },
    Deliver {
        task: u32,
        src: u32,
        piece: u32,
    },
    Refused {
        task: u32,
        src: u32,
        piece: u32,
    },
    Failed {
        task: u32,
        src: u32,
        piece: u32,
    },
    /// The uploader answered PieceBusy.
    PieceBusy {
        task: u32,
        src: u32,
        piece: u32,
    },
    PeerGone {
        task: u32,
        peer: u32,
    },
    Have {
        task: u32,
        piece: u32,
        site: u16,
    },
    /// The task's host offers a piece still arriving there to the subscribers in `site`.
    Arriving {
        task: u32,
        piece: u32,
        site: u16,
    },
    /// The task's host lost the copy it offered while arriving: it tells the subscribers in
    /// `site` it does not hold the piece.
    Withdrawn {
        task: u32,
        piece: u32,
        site: u16,
    },
    /// Whether the first batch of the piece arriving at the task over `flow` is in yet.
    FirstBatch {
        task: u32,
        piece: u32,
        flow: u32,
    },
    Timer(u32),
    OriginGone,
    /// The origin's answer to the request for `asked` carries `got` instead (an alternative).
    OriginSubst {
        task: u32,
        asked: u32,
        got: u32,
    },
}

impl Ev {
    /// Names of the kinds, in [`Ev::kind`] order.
    pub(super) const KINDS: [&'static str; 27] = [
        "join",
        "leave",
        "tick",
        "lookup_done",
        "open",
        "announce",
        "peer_request",
        "peer_cancel",
        "origin_request",
        "origin_admit",
        "origin_cancel",
        "flow_end",
        "deliver",
        "refused",
        "failed",
        "peer_gone",
        "have",
        "timer",
        "origin_gone",
        "swarm_count",
        "origin_subst",
        "relookup",
        "origin_period",
        "piece_busy",
        "arriving",
        "first_batch",
        "withdrawn",
    ];

    pub(super) fn kind(&self) -> usize {
        match self {
            Ev::Join(_) => 0,
            Ev::Leave(_) => 1,
            Ev::Tick(_) => 2,
            Ev::LookupDone(_) => 3,
            Ev::Open { .. } => 4,
            Ev::Announce(_) => 5,
            Ev::PeerRequest { .. } => 6,
            Ev::PeerCancel { .. } => 7,
            Ev::OriginRequest { .. } => 8,
            Ev::OriginAdmit { .. } => 9,
            Ev::OriginCancel { .. } => 10,
            Ev::FlowEnd { .. } => 11,
            Ev::Deliver { .. } => 12,
            Ev::Refused { .. } => 13,
            Ev::Failed { .. } => 14,
            Ev::PeerGone { .. } => 15,
            Ev::Have { .. } => 16,
            Ev::Timer(_) => 17,
            Ev::OriginGone => 18,
            Ev::SwarmCount { .. } => 19,
            Ev::OriginSubst { .. } => 20,
            Ev::Relookup(_) => 21,
            Ev::OriginPeriod(_) => 22,
            Ev::PieceBusy { .. } => 23,
            Ev::Arriving { .. } => 24,
            Ev::FirstBatch { .. } => 25,
            Ev::Withdrawn { .. } => 26,
        }
    }
}
