import Foundation
import TalkieCore

/// What a batch is made of: the narration, where the templates come from, the settings in force.
public struct BatchInputs: Codable, Sendable, Equatable {
    /// The narration's path.
    public var audio: String
    /// Template files and folders, as given.
    public var videos: [String]
    /// The settings of the latest run.
    public var settings: RenderSettings

    /// Creates batch inputs.
    public init(audio: String, videos: [String], settings: RenderSettings) {
        self.audio = audio
        self.videos = videos
        self.settings = settings
    }
}

/// The snapshot `task_status.json`: the whole state, human-readable.
public struct StateDocument: Codable, Sendable, Equatable {
    /// The newest schema this Talkie reads and writes.
    public static let currentSchema = 1

    /// The schema version of this document.
    public var schema: Int
    /// Increases with every snapshot written.
    public var generation: Int
    /// The journal sequence number this snapshot includes (records up to it are in it).
    public var lastSequence: Int
    /// The identity hash algorithm of every key here.
    public var hashAlgorithm: String
    /// The program that wrote it.
    public var writtenBy: String
    /// When it was written.
    public var savedAt: Date
    /// The batch's inputs and current settings; nil before the first run.
    public var batch: BatchInputs?
    /// Every settings fingerprint that made an output, with the settings themselves.
    public var settingsHistory: [String: RenderSettings]
    /// Every item, sorted by key.
    public var items: [Item]

    /// An empty first-generation document.
    public static func empty(writtenBy: String) -> StateDocument {
        StateDocument(schema: currentSchema, generation: 0, lastSequence: 0, hashAlgorithm: FileHasher.algorithm,
                      writtenBy: writtenBy, savedAt: Date(), batch: nil, settingsHistory: [:], items: [])
    }
}

/// One line of the journal `task_status.journal`: a single change, O(1) in the batch's size.
struct JournalRecord: Codable, Equatable {
    /// Strictly increasing across journal files; a snapshot includes every record up to its `lastSequence`.
    var seq: Int
    /// An item's new record (insert or replace).
    var item: Item?
    /// New batch inputs and settings.
    var batch: BatchInputs?
}

/// The JSON form of every stored record (state files, the journal, the cluster's rows).
public enum StateCoding {
    /// An encoder: ISO 8601 dates, sorted keys; `pretty` for files people read.
    public static func encoder(pretty: Bool) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// The matching decoder.
    public static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}
