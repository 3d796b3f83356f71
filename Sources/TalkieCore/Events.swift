import Foundation

/// Everything a batch tells the world, in one typed stream: the CLI prints it, the run log
/// stores it, the studio pushes it to pages. An event is sent only after the state change it
/// reports is durable.
public enum BatchEvent: Sendable, Equatable {
    /// A run started: `total` items in the batch, `toRender` of them will be rendered.
    case batchStarted(total: Int, toRender: Int, settings: String)
    /// An item joined the queue.
    case itemQueued(key: ItemKey, name: String)
    /// An engine started an item on `device` ("gpu 1" with `--gpus`, else what the engine
    /// reported: "cpu", "cuda", a service's address).
    case itemStarted(key: ItemKey, name: String, attempt: Int, device: String?)
    /// Progress of the running item.
    case itemProgress(key: ItemKey, progress: RenderProgress)
    /// An item's output is verified and committed.
    case itemSucceeded(key: ItemKey, name: String, output: String, seconds: Double, score: Double?)
    /// An attempt failed; `willRetry` when it goes back to the queue automatically.
    case itemFailed(key: ItemKey, name: String, error: ItemError, willRetry: Bool)
    /// An item went back to pending because the user stopped the run.
    case itemStopped(key: ItemKey, name: String)
    /// Something the user should know that is not an item's failure.
    case warning(String)
    /// The run ended.
    case batchFinished(BatchSummary)
}

/// How far a running item is. Most engines count frames; a service that only reports
/// stages (HeyGem's face2face) gives a percentage and the stage's name instead.
public struct RenderProgress: Sendable, Equatable, Codable {
    /// What `frame` and `frames` count.
    public enum Unit: String, Sendable, Codable {
        /// Video frames written.
        case frames
        /// Percent of the work (`frames` is 100); no frame rate can be derived.
        case percent
    }

    /// Done so far.
    public var frame: Int
    /// Done when finished (0 when unknown).
    public var frames: Int
    /// What the two numbers count.
    public var unit: Unit
    /// The engine's name for what it is doing now, when it says.
    public var stage: String?

    /// Creates a progress report.
    public init(frame: Int, frames: Int, unit: Unit = .frames, stage: String? = nil) {
        self.frame = frame
        self.frames = frames
        self.unit = unit
        self.stage = stage
    }

    /// The fraction done, 0...1 (0 when the total is unknown).
    public var fraction: Double { frames > 0 ? min(1, max(0, Double(frame) / Double(frames))) : 0 }
}

/// An event with the moment it happened: the run log and every page show the same time.
public struct TimedEvent: Sendable, Equatable {
    /// When it happened.
    public var time: Date
    /// What happened.
    public var event: BatchEvent

    /// Creates a timed event.
    public init(time: Date, event: BatchEvent) {
        self.time = time
        self.event = event
    }

    /// The event as one JSON line (see `BatchEvent.jsonLine(at:)`).
    public var jsonLine: String { event.jsonLine(at: time) }
}

/// Counts at the end of a run.
public struct BatchSummary: Sendable, Equatable, Codable {
    /// Items in the batch.
    public var total: Int
    /// Items successful (this run or earlier).
    public var succeeded: Int
    /// Items failed.
    public var failed: Int
    /// Items still pending (stopped or paused runs).
    public var pending: Int
    /// Items rendered by this run.
    public var renderedThisRun: Int
    /// Whether the run was stopped or paused before the queue was empty.
    public var interrupted: Bool

    /// Creates a summary.
    public init(total: Int, succeeded: Int, failed: Int, pending: Int, renderedThisRun: Int, interrupted: Bool) {
        self.total = total
        self.succeeded = succeeded
        self.failed = failed
        self.pending = pending
        self.renderedThisRun = renderedThisRun
        self.interrupted = interrupted
    }
}

extension BatchEvent {
    /// The event's name in JSON lines and logs.
    public var name: String {
        switch self {
        case .batchStarted: "batch_started"
        case .itemQueued: "item_queued"
        case .itemStarted: "item_started"
        case .itemProgress: "item_progress"
        case .itemSucceeded: "item_succeeded"
        case .itemFailed: "item_failed"
        case .itemStopped: "item_stopped"
        case .warning: "warning"
        case .batchFinished: "batch_finished"
        }
    }

    /// The event as a flat JSON object (without the timestamp).
    public var fields: [String: JSONValue] {
        var fields: [String: JSONValue] = ["event": .string(name)]
        switch self {
        case .batchStarted(let total, let toRender, let settings):
            fields["total"] = .number(Double(total))
            fields["to_render"] = .number(Double(toRender))
            fields["settings"] = .string(settings)
        case .itemQueued(let key, let name):
            fields["key"] = .string(key.id); fields["name"] = .string(name)
        case .itemStarted(let key, let name, let attempt, let device):
            fields["key"] = .string(key.id); fields["name"] = .string(name)
            fields["attempt"] = .number(Double(attempt))
            if let device { fields["device"] = .string(device) }
        case .itemProgress(let key, let progress):
            fields["key"] = .string(key.id)
            fields["frame"] = .number(Double(progress.frame)); fields["frames"] = .number(Double(progress.frames))
            if progress.unit != .frames { fields["unit"] = .string(progress.unit.rawValue) }
            if let stage = progress.stage { fields["stage"] = .string(stage) }
        case .itemSucceeded(let key, let name, let output, let seconds, let score):
            fields["key"] = .string(key.id); fields["name"] = .string(name)
            fields["output"] = .string(output); fields["seconds"] = .number((seconds * 1000).rounded() / 1000)
            if let score { fields["score"] = .number((score * 1000).rounded() / 1000) }
        case .itemFailed(let key, let name, let error, let willRetry):
            fields["key"] = .string(key.id); fields["name"] = .string(name)
            fields["kind"] = .string(error.kind.rawValue); fields["message"] = .string(error.message)
            fields["will_retry"] = .bool(willRetry)
        case .itemStopped(let key, let name):
            fields["key"] = .string(key.id); fields["name"] = .string(name)
        case .warning(let message):
            fields["message"] = .string(message)
        case .batchFinished(let summary):
            fields["total"] = .number(Double(summary.total))
            fields["succeeded"] = .number(Double(summary.succeeded))
            fields["failed"] = .number(Double(summary.failed))
            fields["pending"] = .number(Double(summary.pending))
            fields["rendered"] = .number(Double(summary.renderedThisRun))
            fields["interrupted"] = .bool(summary.interrupted)
        }
        return fields
    }

    /// One JSON line (no newline): `{"time":…,"event":…, other fields sorted}`.
    public func jsonLine(at date: Date) -> String {
        Self.jsonLine(event: name, fields: fields, at: date)
    }

    /// The line format of every event, also for events that are not a `BatchEvent` (the CLI's
    /// `batch_failed`): time first, then the event's name, then the other fields sorted.
    public static func jsonLine(event name: String, fields: [String: JSONValue], at date: Date) -> String {
        var rest = fields
        rest["event"] = nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = String(decoding: (try? encoder.encode(rest)) ?? Data("{}".utf8), as: UTF8.self)
        let time = date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        let head = "{\"time\":\"\(time)\",\"event\":\"\(name)\""
        return body == "{}" ? head + "}" : head + "," + body.dropFirst()
    }
}

extension TimedEvent {
    /// Parses a line `jsonLine` wrote (events that crossed a process or machine boundary:
    /// cluster workers' events reach pages and `talkie run --store` this way). Nil for a
    /// line that is not such an event.
    public init?(jsonLine line: String) {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)),
              case .object(let fields) = value, case .string(let stamp)? = fields["time"],
              let time = try? Date(stamp, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)),
              let event = BatchEvent(fields: fields) else { return nil }
        self.init(time: time, event: event)
    }
}

extension BatchEvent {
    /// The event `fields` describes (the inverse of `fields`), or nil.
    public init?(fields: [String: JSONValue]) {
        func string(_ name: String) -> String? { if case .string(let value)? = fields[name] { value } else { nil } }
        func number(_ name: String) -> Double? { if case .number(let value)? = fields[name] { value } else { nil } }
        func int(_ name: String) -> Int { Int(number(name) ?? 0) }
        let key = string("key").flatMap(ItemKey.init(id:))
        let name = string("name") ?? key?.short ?? ""
        switch string("event") {
        case "batch_started":
            self = .batchStarted(total: int("total"), toRender: int("to_render"), settings: string("settings") ?? "")
        case "item_queued":
            guard let key else { return nil }
            self = .itemQueued(key: key, name: name)
        case "item_started":
            guard let key else { return nil }
            self = .itemStarted(key: key, name: name, attempt: int("attempt"), device: string("device"))
        case "item_progress":
            guard let key else { return nil }
            self = .itemProgress(key: key, progress: RenderProgress(
                frame: int("frame"), frames: int("frames"), unit: string("unit").flatMap(RenderProgress.Unit.init) ?? .frames,
                stage: string("stage")))
        case "item_succeeded":
            guard let key, let output = string("output") else { return nil }
            self = .itemSucceeded(key: key, name: name, output: output, seconds: number("seconds") ?? 0, score: number("score"))
        case "item_failed":
            guard let key else { return nil }
            let error = ItemError(kind: string("kind").flatMap(FailureKind.init) ?? .transient, message: string("message") ?? "")
            self = .itemFailed(key: key, name: name, error: error, willRetry: fields["will_retry"] == .bool(true))
        case "item_stopped":
            guard let key else { return nil }
            self = .itemStopped(key: key, name: name)
        case "warning":
            self = .warning(string("message") ?? "")
        case "batch_finished":
            self = .batchFinished(BatchSummary(total: int("total"), succeeded: int("succeeded"), failed: int("failed"),
                                               pending: int("pending"), renderedThisRun: int("rendered"),
                                               interrupted: fields["interrupted"] == .bool(true)))
        default:
            return nil
        }
    }
}
