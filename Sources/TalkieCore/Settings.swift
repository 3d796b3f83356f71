import Foundation

/// A JSON value, for engine parameters whose shape only the engine knows.
public enum JSONValue: Codable, Sendable, Hashable, CustomStringConvertible {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .null: try container.encodeNil()
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses a command-line value: `true`/`false`, a number, or else a string.
    public init(parsing text: String) {
        if text == "true" { self = .bool(true) }
        else if text == "false" { self = .bool(false) }
        else if let number = Double(text) { self = .number(number) }
        else { self = .string(text) }
    }

    public var description: String {
        switch self {
        case .string(let value): value
        case .number(let value): value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
        case .bool(let value): String(value)
        case .null: "null"
        case .array(let value): "[" + value.map(\.description).joined(separator: ",") + "]"
        case .object(let value): "{" + value.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + "}"
        }
    }
}

/// The settings of a run: which engine with which parameters, and how the narration is
/// preprocessed. Their fingerprint is stored with every success.
public struct RenderSettings: Codable, Sendable, Hashable {
    /// The engine's name (`classic`, `test`, ...).
    public var engine: String
    /// Engine parameters, passed to the worker as they are.
    public var engineParams: [String: JSONValue]
    /// Audio denoise strength, 0 (off) to 1.
    public var denoise: Double
    /// Audio tempo (speed stretch without pitch change), 0.5 to 2; 1 leaves it.
    public var tempo: Double

    /// Creates settings; see `validate()` for the allowed ranges.
    public init(engine: String = "classic", engineParams: [String: JSONValue] = [:],
                denoise: Double = 0, tempo: Double = 1) {
        self.engine = engine
        self.engineParams = engineParams
        self.denoise = denoise
        self.tempo = tempo
    }

    /// The problems with these settings, as messages a user can act on; empty when valid.
    public func problems() -> [String] {
        var problems: [String] = []
        if engine.isEmpty || engine.contains(where: { !($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) {
            problems.append("engine name '\(engine)' must be letters, digits, '-' or '_'")
        }
        if !(0...1).contains(denoise) { problems.append("denoise strength \(denoise) must be between 0 and 1") }
        if !(0.5...2).contains(tempo) { problems.append("tempo \(tempo) must be between 0.5 and 2") }
        return problems
    }

    /// The canonical text of these settings: JSON with sorted keys.
    public var canonicalJSON: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain values cannot fail.
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// A stable 16-hex-digit fingerprint of `canonicalJSON` (FNV-1a, 64 bits).
    public var fingerprint: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in canonicalJSON.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        let digits = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// A one-line summary for people.
    public var summary: String {
        var parts = ["engine \(engine)", "denoise \(denoise)", "tempo \(tempo)"]
        for (name, value) in engineParams.sorted(by: { $0.key < $1.key }) { parts.append("\(name)=\(value)") }
        return parts.joined(separator: ", ")
    }
}

/// Settings given on a command line or by the studio: what is set replaces the batch's
/// current value, what is not set keeps it.
public struct SettingsOverrides: Sendable, Equatable {
    /// A new engine.
    public var engine: String?
    /// Engine parameters to set (merged into the current ones).
    public var engineParams: [String: JSONValue]
    /// A new denoise strength.
    public var denoise: Double?
    /// A new tempo.
    public var tempo: Double?
    /// Whether `engineParams` replaces the current parameters instead of adding to them.
    public var replacesParams = false

    /// Overrides that set exactly `settings`, whatever was there before.
    public static func exactly(_ settings: RenderSettings) -> SettingsOverrides {
        var overrides = SettingsOverrides(engine: settings.engine, engineParams: settings.engineParams,
                                          denoise: settings.denoise, tempo: settings.tempo)
        overrides.replacesParams = true
        return overrides
    }

    /// Creates overrides.
    public init(engine: String? = nil, engineParams: [String: JSONValue] = [:], denoise: Double? = nil, tempo: Double? = nil) {
        self.engine = engine
        self.engineParams = engineParams
        self.denoise = denoise
        self.tempo = tempo
    }

    /// `base` with these overrides applied. Parameters of another engine are dropped when
    /// the engine changes.
    public func applied(to base: RenderSettings) -> RenderSettings {
        var settings = base
        if let engine, engine != base.engine {
            settings.engine = engine
            settings.engineParams = [:]
        }
        if replacesParams { settings.engineParams = [:] }
        settings.engineParams.merge(engineParams) { _, new in new }
        if let denoise { settings.denoise = denoise }
        if let tempo { settings.tempo = tempo }
        return settings
    }
}
