import Foundation

/// What ffprobe found in a template, stored so a restart never probes it again.
public struct MediaSummary: Codable, Sendable, Equatable {
    /// Duration in seconds.
    public var duration: Double
    /// Display width in pixels (after rotation).
    public var width: Int
    /// Display height in pixels (after rotation).
    public var height: Int
    /// Average frames per second.
    public var fps: Double

    /// Creates a summary.
    public init(duration: Double, width: Int, height: Int, fps: Double) {
        self.duration = duration
        self.width = width
        self.height = height
        self.fps = fps
    }
}

/// One item of a batch as stored: its identity, its inputs' names, its state and its record.
public struct Item: Codable, Sendable, Equatable {
    /// The identity: (video content, audio content).
    public var key: ItemKey
    /// Every path under which the template's content was seen (same content, several names).
    public var names: [String]
    /// The narration's path when the item was created.
    public var audioPath: String
    /// The state machine.
    public var state: ItemState
    /// The template's probe, once probed.
    public var media: MediaSummary?
    /// The engine's lip-sync score of the output, when it gives one.
    public var score: Double?
    /// When the item was first seen.
    public var createdAt: Date
    /// When the last attempt started.
    public var startedAt: Date?
    /// When the last attempt ended.
    public var finishedAt: Date?
    /// Seconds the last attempt took.
    public var renderSeconds: Double?
    /// Where the last attempt ran: "gpu 1" with `--gpus`, else what the engine reported.
    public var device: String?

    /// A new pending item.
    public init(key: ItemKey, names: [String], audioPath: String, createdAt: Date) {
        self.key = key
        self.names = names
        self.audioPath = audioPath
        self.state = ItemState()
        self.createdAt = createdAt
    }

    /// The first name: what a person calls this item.
    public var displayName: String {
        names.first.map { ($0 as NSString).lastPathComponent } ?? key.short
    }
}
