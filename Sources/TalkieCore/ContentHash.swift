/// A 128-bit content digest, shown and stored as 32 lowercase hex digits.
///
/// Identity in Talkie is the content of a file, never its name: two files with the same
/// bytes have the same `ContentHash`.
public struct ContentHash: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The high 64 bits.
    public let high: UInt64
    /// The low 64 bits.
    public let low: UInt64

    /// Creates a digest from its two halves.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses 32 hex digits; `nil` for anything else.
    public init?(hex: String) {
        guard hex.utf8.count == 32,
              let high = UInt64(hex.prefix(16), radix: 16),
              let low = UInt64(hex.suffix(16), radix: 16) else { return nil }
        self.init(high: high, low: low)
    }

    /// The 32 hex digits.
    public var hex: String { Self.hex16(high) + Self.hex16(low) }

    /// The first 12 hex digits: enough to tell items apart in names and messages.
    public var short: String { String(hex.prefix(12)) }

    public var description: String { hex }

    public static func < (lhs: ContentHash, rhs: ContentHash) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = ContentHash(hex: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a 128-bit hex digest: \(text)")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }

    private static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// The identity of one piece of work: a template video's content and the narration's content.
public struct ItemKey: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    /// The template video's content digest.
    public let video: ContentHash
    /// The narration audio's content digest.
    public let audio: ContentHash

    /// Creates the key of the item that renders `video` with `audio`.
    public init(video: ContentHash, audio: ContentHash) {
        self.video = video
        self.audio = audio
    }

    /// `<video hex>-<audio hex>`: the form stored in state files and output metadata.
    public var id: String { video.hex + "-" + audio.hex }

    /// A short form for file names and messages (12 + 4 hex digits).
    public var short: String { video.short + "-" + String(audio.hex.prefix(4)) }

    /// Parses the `id` form.
    public init?(id: String) {
        let parts = id.split(separator: "-")
        guard parts.count == 2,
              let video = ContentHash(hex: String(parts[0])),
              let audio = ContentHash(hex: String(parts[1])) else { return nil }
        self.init(video: video, audio: audio)
    }

    public var description: String { id }

    public static func < (lhs: ItemKey, rhs: ItemKey) -> Bool {
        (lhs.video, lhs.audio) < (rhs.video, rhs.audio)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = ItemKey(id: text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an item key: \(text)")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(id)
    }
}
