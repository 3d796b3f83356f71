import Foundation
import TalkieCore

/// `GET /api/state` and the WebSocket snapshot (see docs/studio-api.md).
struct StudioState: Codable, Sendable, Equatable {
    struct Input: Codable, Sendable, Equatable {
        var key: String
        var name: String
        var size: Int64
        var url: String
    }

    struct Video: Codable, Sendable, Equatable {
        var key: String
        var names: [String]
        var size: Int64
        var url: String
    }

    struct ItemRow: Codable, Sendable, Equatable {
        var key: String
        var names: [String]
        var status: String
        var attempts: Int
        var error: ItemError?
        var output: String?
        var outputUrl: String?
        var score: Double?
        var renderSeconds: Double?
        var otherSettings: Bool
        var device: String?
        var progress: RenderProgress?

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(key, forKey: .key)
            try container.encode(names, forKey: .names)
            try container.encode(status, forKey: .status)
            try container.encode(attempts, forKey: .attempts)
            try container.encode(error, forKey: .error)
            try container.encode(output, forKey: .output)
            try container.encode(outputUrl, forKey: .outputUrl)
            try container.encode(score, forKey: .score)
            try container.encode(renderSeconds, forKey: .renderSeconds)
            try container.encode(otherSettings, forKey: .otherSettings)
            try container.encode(device, forKey: .device)
            try container.encode(progress, forKey: .progress)
        }
    }

    struct Summary: Codable, Sendable, Equatable {
        var total = 0
        var succeeded = 0
        var failed = 0
        var pending = 0
        var running = 0
    }

    var running: Bool
    var pausing: Bool
    var generation: Int
    var engines: [String]
    var settings: RenderSettings
    var fingerprint: String
    var audio: Input?
    var videos: [Video]
    var items: [ItemRow]
    var summary: Summary

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(running, forKey: .running)
        try container.encode(pausing, forKey: .pausing)
        try container.encode(generation, forKey: .generation)
        try container.encode(engines, forKey: .engines)
        try container.encode(settings, forKey: .settings)
        try container.encode(fingerprint, forKey: .fingerprint)
        try container.encode(audio, forKey: .audio)  // null, not absent, before an upload
        try container.encode(videos, forKey: .videos)
        try container.encode(items, forKey: .items)
        try container.encode(summary, forKey: .summary)
    }
}

/// JSON for API bodies: sorted keys, no escaped slashes.
enum APIJSON {
    static func encode(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)) ?? Data("{}".utf8)
    }

    static func string(_ value: some Encodable) -> String { String(decoding: encode(value), as: UTF8.self) }
}

/// Percent-encodes a file name for a URL path segment.
func urlSegment(_ name: String) -> String {
    name.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? name
}
