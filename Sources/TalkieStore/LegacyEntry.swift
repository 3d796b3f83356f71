import Foundation

/// One entry of a `task_status.json` written by the seed's design (HeyGem's batch
/// generator): `{"<md5 of the video>": {"status": "success", ...}}`.
public struct LegacyEntry: Sendable, Equatable {
    /// The status it recorded (`pending`, `running`, `success`, `failed`, ...).
    public var status: String
    /// The output path it recorded, when it did.
    public var output: String?
    /// The file name it recorded, when it did.
    public var fileName: String?

    /// Whether the older tool had finished this item.
    public var isSuccess: Bool { ["success", "completed", "done", "finished"].contains(status.lowercased()) }

    /// Parses the seed's format: every key 32 hex digits, every value an object with a
    /// `status`. `nil` when the object is not in that format (or is empty).
    static func parseSeedFormat(_ object: [String: Any]) -> [String: LegacyEntry]? {
        guard !object.isEmpty else { return nil }
        var entries: [String: LegacyEntry] = [:]
        for (key, value) in object {
            guard key.count == 32, key.allSatisfy(\.isHexDigit),
                  let fields = value as? [String: Any], let status = fields["status"] as? String else { return nil }
            let output = (fields["output"] ?? fields["output_path"] ?? fields["result"]) as? String
            let name = (fields["filename"] ?? fields["file_name"] ?? fields["name"] ?? fields["video"]) as? String
            entries[key.lowercased()] = LegacyEntry(status: status, output: output, fileName: name)
        }
        return entries
    }
}
