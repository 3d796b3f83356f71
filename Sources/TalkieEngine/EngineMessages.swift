import Foundation
import TalkieCore

/// What a worker says in its handshake.
public struct EngineHello: Sendable, Equatable {
    /// The engine's name.
    public var name: String
    /// The engine's version.
    public var version: String
    /// The audio sample rate it wants, if any.
    public var audioSampleRate: Int?
    /// The audio channel count it wants, if any.
    public var audioChannels: Int?
    /// Where it computes (`cpu`, `cuda:0`, ...), if it says.
    public var device: String?
}

/// One message from a worker (see docs/engine-protocol.md).
public enum WorkerMessage: Sendable, Equatable {
    case hello(EngineHello)
    case fatal(message: String)
    case progress(id: String, RenderProgress)
    case done(id: String, frames: Int?, score: Double?)
    case error(id: String, error: ItemError)
    case log(id: String?, level: String, message: String)
    /// A well-formed message of a type this runner does not know: ignored.
    case unknown(type: String)

    /// The protocol version this runner speaks.
    public static let protocolVersion = 1

    /// Parses one line; `nil` when it is not a protocol message at all.
    public init?(line: String) {
        guard let data = line.data(using: .utf8),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let type = object["type"] as? String else { return nil }
        func int(_ key: String) -> Int? { (object[key] as? NSNumber)?.intValue }
        let id = object["id"] as? String
        switch type {
        case "hello":
            let capabilities = object["capabilities"] as? [String: Any] ?? [:]
            guard let name = object["name"] as? String, int("protocol") != nil else { return nil }
            self = .hello(EngineHello(name: name, version: object["version"] as? String ?? "?",
                                      audioSampleRate: (capabilities["audio_sample_rate"] as? NSNumber)?.intValue,
                                      audioChannels: (capabilities["audio_channels"] as? NSNumber)?.intValue,
                                      device: capabilities["device"] as? String))
            if int("protocol") != Self.protocolVersion {
                self = .fatal(message: "the engine speaks protocol \(int("protocol")!), this Talkie speaks \(Self.protocolVersion)")
            }
        case "fatal":
            self = .fatal(message: object["message"] as? String ?? "the engine cannot start")
        case "progress":
            guard let id, let frame = int("frame") else { return nil }
            let unit = RenderProgress.Unit(rawValue: object["unit"] as? String ?? "") ?? .frames
            let stage = (object["stage"] as? String).map { String($0.prefix(200)) }
            self = .progress(id: id, RenderProgress(frame: frame, frames: int("frames") ?? 0, unit: unit, stage: stage))
        case "done":
            guard let id else { return nil }
            self = .done(id: id, frames: int("frames"), score: (object["score"] as? NSNumber)?.doubleValue)
        case "error":
            guard let id else { return nil }
            let kind = FailureKind(rawValue: object["kind"] as? String ?? "") ?? .transient
            self = .error(id: id, error: ItemError(kind: kind, message: object["message"] as? String ?? "the engine failed"))
        case "log":
            self = .log(id: id, level: object["level"] as? String ?? "info", message: object["message"] as? String ?? "")
        default:
            self = .unknown(type: type)
        }
    }
}

/// One render request to a worker.
public struct RenderJob: Sendable, Equatable {
    /// Unique per attempt; every answer repeats it.
    public var id: String
    /// The template video.
    public var video: String
    /// The preprocessed narration.
    public var audio: String
    /// Where the worker writes its MP4.
    public var output: String
    /// The item's key.
    public var itemKey: ItemKey
    /// Engine parameters.
    public var params: [String: JSONValue]
    /// A folder for caches keyed by content.
    public var cacheDirectory: String
    /// The narration's duration in seconds.
    public var duration: Double

    /// Creates a render request.
    public init(id: String, video: String, audio: String, output: String, itemKey: ItemKey,
                params: [String: JSONValue], cacheDirectory: String, duration: Double) {
        self.id = id
        self.video = video
        self.audio = audio
        self.output = output
        self.itemKey = itemKey
        self.params = params
        self.cacheDirectory = cacheDirectory
        self.duration = duration
    }

    /// The request as one protocol line (with its newline).
    public var line: String {
        let object: [String: JSONValue] = [
            "type": .string("render"), "id": .string(id), "video": .string(video), "audio": .string(audio),
            "output": .string(output), "item_key": .string(itemKey.id), "video_key": .string(itemKey.video.hex),
            "audio_key": .string(itemKey.audio.hex), "params": .object(params),
            "cache_dir": .string(cacheDirectory), "duration": .number(duration),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(object)) ?? Data(), as: UTF8.self) + "\n"
    }
}
