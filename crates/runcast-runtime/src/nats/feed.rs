//! [`OrderedFeed`]: the events of a stream (or of one subject filter in it) from a sequence on, in
//! order, each once, for as long as the caller reads — what async-nats' ordered pull consumer
//! promises, without its stall.
//!
//! Why not `pull::OrderedConfig` + `messages()`: async-nats 0.51 counts a pull request's messages
//! as pending only when a helper task reports the request sent. Under CPU load the server's
//! answer can be read first; the count then drops to 0 (saturating) and is raised by the whole
//! batch afterwards, so the stream believes messages are on their way that never come and asks
//! for no more until the request's 30 s expiry. The gateway's live feed stopped for 30 s that way
//! on a busy machine. Here the request is published and counted by the task that reads the
//! answers, before it reads them, so the count cannot run ahead of the truth.

use crate::error::{Error, ErrorKind};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream::Stream};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt as _;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How a feed pulls. The defaults suit a live feed: a pull request is always waiting at the server,
/// so a new event is pushed at once, and a silent server is noticed within two heartbeats.
#[derive(Debug, Clone, Copy)]
pub struct FeedOptions {
    /// Messages one pull request asks for; a new one is sent once half of them have arrived. It
    /// bounds what the feed may hold before its reader sees it (events are up to 1 MiB).
    pub batch: usize,
    /// How long the server keeps a pull request waiting.
    pub expires: Duration,
    /// How often the server reports in while a request waits with nothing to send.
    pub heartbeat: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self { batch: 32, expires: Duration::from_secs(30), heartbeat: Duration::from_secs(5) }
    }
}

/// Messages asked for and not yet received: pure bookkeeping, so it is tested apart from NATS.
///
/// When unsure it assumes less is on its way, never more: asking twice costs a little buffer,
/// believing in messages that never come stalls the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Credit {
    batch: usize,
    outstanding: usize,
}

impl Credit {
    fn new(batch: usize) -> Self {
        Self { batch: batch.max(1), outstanding: 0 }
    }

    /// Whether another request should go out now.
    fn wants_more(&self) -> bool {
        self.outstanding <= self.batch / 2
    }

    /// A request for `batch` messages was published.
    fn requested(&mut self) {
        self.outstanding += self.batch;
    }

    fn delivered(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// A request ended early (expired, or refused) with `unanswered` of its messages never sent;
    /// `None` when the server did not say how many: then nothing is assumed to be on its way.
    fn ended(&mut self, unanswered: Option<usize>) {
        self.outstanding = match unanswered {
            Some(unanswered) => self.outstanding.saturating_sub(unanswered),
            None => 0,
        };
    }
}

/// What one message from the server means to the feed.
#[derive(Debug, PartialEq, Eq)]
enum Status {
    Event,
    Heartbeat,
    /// A pull request ended without all its messages (`408` expiry, most `409`s).
    RequestEnded {
        unanswered: Option<usize>,
    },
    /// The consumer is gone or moving (deleted, leader change, server shutting down, no
    /// JetStream answering): create it again after the last event read.
    ConsumerLost(String),
    /// Anything else: a misconfiguration the feed cannot fix by itself.
    Refused(String),
}

fn classify(message: &async_nats::Message) -> Status {
    let description = || message.description.clone().unwrap_or_default();
    match message.status {
        None | Some(StatusCode::OK) => Status::Event,
        Some(StatusCode::IDLE_HEARTBEAT) => Status::Heartbeat,
        Some(StatusCode::NO_RESPONDERS) => Status::ConsumerLost("no JetStream server answers".into()),
        Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
            Status::RequestEnded { unanswered: unanswered(message) }
        }
        Some(StatusCode::REQUEST_TERMINATED) => {
            let text = description();
            let lower = text.to_ascii_lowercase();
            if ["consumer deleted", "leadership change", "server shutdown"].iter().any(|lost| lower.contains(lost)) {
                Status::ConsumerLost(text)
            } else if message.headers.as_ref().is_some_and(|headers| headers.get("Nats-Pending-Messages").is_some()) {
                Status::RequestEnded { unanswered: unanswered(message) }
            } else {
                Status::Refused(text)
            }
        }
        Some(status) => Status::Refused(format!("{status}: {}", description())),
    }
}

fn unanswered(message: &async_nats::Message) -> Option<usize> {
    message.headers.as_ref()?.get("Nats-Pending-Messages")?.as_str().parse().ok()
}

/// An ordered read of `filter` in a stream from a sequence on. It creates its own ephemeral,
/// in-memory, unacknowledged consumer, and creates it again after the last event it returned
/// when the consumer is lost, a delivery is missing, or the server falls silent; the caller sees
/// an error only when that fails. Dropping the feed stops it (the server forgets the consumer once
/// no request has arrived for a while).
pub struct OrderedFeed {
    stream: Stream<()>,
    context: jetstream::Context,
    filter: String,
    options: FeedOptions,
    consumer: Consumer<pull::Config>,
    inbox: Subject,
    answers: Subscriber,
    credit: Credit,
    /// The consumer's own count of what it delivered: a jump means a message was lost on the way.
    delivered: u64,
    /// The stream sequence of the last event returned: a new consumer starts right after it.
    last_sequence: u64,
    /// Fires when the server has said nothing for two heartbeats.
    silence: Pin<Box<Sleep>>,
    recreated: u64,
}

impl std::fmt::Debug for OrderedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedFeed")
            .field("filter", &self.filter)
            .field("last_sequence", &self.last_sequence)
            .field("credit", &self.credit)
            .finish_non_exhaustive()
    }
}

impl OrderedFeed {
    /// Starts reading `filter` of `stream` at `start_sequence` (1 = the beginning).
    pub async fn start(
        context: &jetstream::Context,
        stream: &str,
        filter: String,
        start_sequence: u64,
        options: FeedOptions,
    ) -> Result<Self, Error> {
        let stream = context
            .get_stream_no_info(stream)
            .await
            .map_err(|err| Error::with_source(ErrorKind::Unavailable, format!("cannot open stream {stream}"), err))?;
        let (consumer, inbox, answers) = Self::create(context, &stream, &filter, start_sequence, options).await?;
        Ok(Self {
            stream,
            context: context.clone(),
            filter,
            options,
            consumer,
            inbox,
            answers,
            credit: Credit::new(options.batch),
            delivered: 0,
            last_sequence: start_sequence.saturating_sub(1),
            silence: Box::pin(tokio::time::sleep(options.heartbeat * 2)),
            recreated: 0,
        })
    }

    async fn create(
        context: &jetstream::Context,
        stream: &Stream<()>,
        filter: &str,
        start_sequence: u64,
        options: FeedOptions,
    ) -> Result<(Consumer<pull::Config>, Subject, Subscriber), Error> {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start_sequence.max(1) },
                ack_policy: AckPolicy::None,
                max_batch: i64::try_from(options.batch).unwrap_or(i64::MAX),
                memory_storage: true,
                num_replicas: 1,
                // Pull requests keep it alive; a dropped feed's consumer goes after this.
                inactive_threshold: options.expires.max(Duration::from_secs(30)),
                ..Default::default()
            })
            .await
            .map_err(|err| {
                Error::with_source(ErrorKind::Unavailable, format!("cannot create a consumer of {filter}"), err)
            })?;
        let inbox = Subject::from(context.client().new_inbox());
        let answers =
            context.client().subscribe(inbox.clone()).await.map_err(|err| {
                Error::with_source(ErrorKind::Unavailable, "cannot subscribe to the feed's inbox", err)
            })?;
        Ok((consumer, inbox, answers))
    }

    /// The stream sequence of the last event returned (the start sequence − 1 before the first).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// How many times the feed had to create its consumer again (lost, silent, or skipping).
    pub fn recreated(&self) -> u64 {
        self.recreated
    }

    /// The next event. Cancel-safe: dropping the future loses nothing, so it can sit in a
    /// `select!` beside other work.
    pub async fn next(&mut self) -> Result<jetstream::Message, Error> {
        loop {
            if self.credit.wants_more() {
                self.request().await?;
            }
            let answer = tokio::select! {
                answer = self.answers.next() => answer,
                () = &mut self.silence => {
                    self.recreate("the server sent nothing for two heartbeats").await?;
                    continue;
                }
            };
            let Some(message) = answer else {
                self.recreate("the feed's subscription ended").await?;
                continue;
            };
            self.silence.as_mut().reset(Instant::now() + self.options.heartbeat * 2);
            match classify(&message) {
                Status::Heartbeat => {}
                Status::RequestEnded { unanswered } => self.credit.ended(unanswered),
                Status::ConsumerLost(why) => self.recreate(&why).await?,
                Status::Refused(why) => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("the server refused to feed {}: {why}", self.filter),
                    ));
                }
                Status::Event => {
                    self.credit.delivered();
                    let message = jetstream::Message { message, context: self.context.clone() };
                    let (delivered, sequence) = match message.info() {
                        Ok(info) => (info.consumer_sequence, info.stream_sequence),
                        Err(err) => {
                            return Err(Error::with_source(
                                ErrorKind::Internal,
                                "a fed message has no JetStream info",
                                err,
                            ));
                        }
                    };
                    if delivered != self.delivered + 1 {
                        let why = format!("delivery {delivered} arrived after {}", self.delivered);
                        self.recreate(&why).await?;
                        continue;
                    }
                    self.delivered = delivered;
                    self.last_sequence = sequence;
                    return Ok(message);
                }
            }
        }
    }

    /// Publishes one pull request, then counts it (the answers are read by this same task, so none
    /// can be counted before its request).
    async fn request(&mut self) -> Result<(), Error> {
        let request = pull::BatchConfig {
            batch: self.credit.batch,
            expires: Some(self.options.expires),
            idle_heartbeat: self.options.heartbeat,
            ..Default::default()
        };
        self.consumer.request_batch(request, self.inbox.clone()).await.map_err(|err| {
            Error::with_source(ErrorKind::Unavailable, format!("cannot ask for events of {}", self.filter), err)
        })?;
        self.credit.requested();
        Ok(())
    }

    /// A fresh consumer right after the last event returned; the old one is deleted in the
    /// background (it would go by itself once idle). Fields change only once the new one exists,
    /// so a cancelled or failed attempt leaves the feed as it was, to try again.
    async fn recreate(&mut self, why: &str) -> Result<(), Error> {
        tracing::info!(filter = %self.filter, after = self.last_sequence, why, "recreating the feed's consumer");
        let (consumer, inbox, answers) =
            Self::create(&self.context, &self.stream, &self.filter, self.last_sequence + 1, self.options)
                .await
                .map_err(|err| {
                    Error::with_source(err.kind(), format!("the feed of {} was lost ({why})", self.filter), err)
                })?;
        let old = std::mem::replace(&mut self.consumer, consumer);
        let stream = self.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&old.cached_info().name).await;
        });
        self.inbox = inbox;
        self.answers = answers;
        self.credit = Credit::new(self.options.batch);
        self.delivered = 0;
        self.recreated += 1;
        self.silence.as_mut().reset(Instant::now() + self.options.heartbeat * 2);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_goes_out_once_half_the_last_one_has_arrived() {
        let mut credit = Credit::new(32);
        assert!(credit.wants_more(), "nothing asked yet");
        credit.requested();
        assert!(!credit.wants_more());
        for _ in 0..15 {
            credit.delivered();
        }
        assert!(!credit.wants_more(), "17 still on their way");
        credit.delivered();
        assert!(credit.wants_more(), "16 on their way: ask again, so the server always has a request");
        credit.requested();
        assert_eq!(credit.outstanding, 48);
    }

    #[test]
    fn an_ended_request_gives_back_what_it_never_sent_and_an_unknown_count_assumes_nothing_comes() {
        let mut credit = Credit::new(32);
        credit.requested();
        credit.requested();
        credit.ended(Some(32));
        assert_eq!(credit.outstanding, 32, "one request expired untouched");
        credit.ended(None);
        assert_eq!(credit.outstanding, 0, "unsure: ask again rather than wait for nothing");
        assert!(credit.wants_more());
        credit.ended(Some(5));
        assert_eq!(credit.outstanding, 0, "never below zero");
    }

    #[test]
    fn more_deliveries_than_asked_never_leave_credit_that_is_not_there() {
        // What stalled async-nats: answers counted before their request. Here the count can only
        // fall to zero, and zero asks again.
        let mut credit = Credit::new(32);
        for _ in 0..40 {
            credit.delivered();
        }
        assert_eq!(credit.outstanding, 0);
        assert!(credit.wants_more());
    }

    fn status(code: u16, description: &str, pending: Option<&str>) -> async_nats::Message {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(pending) = pending {
            headers.insert("Nats-Pending-Messages", pending);
        }
        async_nats::Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Default::default(),
            headers: Some(headers),
            status: Some(StatusCode::from_u16(code).expect("a status code")),
            description: Some(description.into()),
            length: 0,
        }
    }

    #[test]
    fn server_statuses_mean_what_the_pull_protocol_says() {
        assert_eq!(classify(&status(100, "Idle Heartbeat", None)), Status::Heartbeat);
        assert_eq!(classify(&status(408, "Request Timeout", Some("7"))), Status::RequestEnded { unanswered: Some(7) });
        assert_eq!(classify(&status(408, "Request Timeout", None)), Status::RequestEnded { unanswered: None });
        assert_eq!(classify(&status(409, "Consumer Deleted", None)), Status::ConsumerLost("Consumer Deleted".into()));
        assert_eq!(
            classify(&status(409, "Leadership Change", Some("3"))),
            Status::ConsumerLost("Leadership Change".into())
        );
        assert_eq!(classify(&status(409, "Batch Completed", Some("2"))), Status::RequestEnded { unanswered: Some(2) });
        assert!(matches!(classify(&status(409, "Exceeded MaxRequestBatch of 32", None)), Status::Refused(_)));
        assert!(matches!(classify(&status(503, "", None)), Status::ConsumerLost(_)));
        let event = async_nats::Message { status: None, ..status(100, "", None) };
        assert_eq!(classify(&event), Status::Event);
    }
}
