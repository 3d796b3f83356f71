import Foundation
import TalkieCore
import TalkieStore

/// The uploads of a workspace, stored under their content key (`inputs/videos/<key>.mp4`),
/// never under a client's file name; `inputs/manifest.json` keeps the names people gave them.
final class InputLibrary {
    struct Entry: Codable, Equatable {
        var key: ContentHash
        var fileExtension: String
        var names: [String]
        var size: Int64
    }

    struct Manifest: Codable {
        var audio: Entry?
        var videos: [Entry] = []
    }

    let folder: String
    private(set) var manifest = Manifest()

    init(folder: String) throws {
        self.folder = folder
        for sub in ["audio", "videos", "uploads"] {
            try FileManager.default.createDirectory(atPath: folder + "/" + sub, withIntermediateDirectories: true)
        }
        if let data = FileManager.default.contents(atPath: folder + "/manifest.json") {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        }
        // Uploads cut off by a crash are never reused.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder + "/uploads")) ?? [] {
            unlink(folder + "/uploads/" + name)
        }
    }

    /// Where uploads are streamed before they have a key.
    var uploadFolder: String { folder + "/uploads" }

    func path(audio entry: Entry) -> String { "\(folder)/audio/\(entry.key.hex).\(entry.fileExtension)" }
    func path(video entry: Entry) -> String { "\(folder)/videos/\(entry.key.hex).\(entry.fileExtension)" }

    var audioPath: String? { manifest.audio.map { path(audio: $0) } }
    var videoPaths: [String] { manifest.videos.map { path(video: $0) } }

    /// Template path → the name shown to people.
    var displayNames: [String: String] {
        var names: [String: String] = [:]
        for entry in manifest.videos { names[path(video: entry)] = entry.names.first ?? entry.key.short }
        return names
    }

    func video(_ key: ContentHash) -> Entry? { manifest.videos.first { $0.key == key } }

    /// Moves a received upload into place. Returns whether the content was already there.
    func add(upload: ReceivedUpload, name: String, isAudio: Bool) throws -> Bool {
        let ext = Self.safeExtension(of: name, isAudio: isAudio)
        var entry = Entry(key: upload.key, fileExtension: ext, names: [name], size: upload.size)
        var duplicate = false
        if isAudio {
            if manifest.audio?.key == upload.key { entry = manifest.audio!; duplicate = true }
            manifest.audio = entry
        } else if let index = manifest.videos.firstIndex(where: { $0.key == upload.key }) {
            duplicate = true
            if !manifest.videos[index].names.contains(name) { manifest.videos[index].names.append(name) }
            entry = manifest.videos[index]
        } else {
            manifest.videos.append(entry)
        }
        let destination = isAudio ? path(audio: entry) : path(video: entry)
        if duplicate || FileManager.default.fileExists(atPath: destination) {
            unlink(upload.path)
        } else if rename(upload.path, destination) != 0 {
            throw StudioError(500, "upload.io", "cannot store the upload: \(String(cString: strerror(errno)))")
        }
        try save()
        return duplicate
    }

    /// Removes a template from the batch (its file too; outputs are kept).
    func removeVideo(_ key: ContentHash) throws -> Bool {
        guard let index = manifest.videos.firstIndex(where: { $0.key == key }) else { return false }
        let entry = manifest.videos.remove(at: index)
        try save()
        unlink(path(video: entry))
        return true
    }

    private func save() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeFileDurably(folder + "/manifest.json", try encoder.encode(manifest))
    }

    /// A file extension safe to put on disk (letters and digits only), defaulting by kind.
    static func safeExtension(of name: String, isAudio: Bool) -> String {
        let ext = (name as NSString).pathExtension.lowercased()
        guard !ext.isEmpty, ext.count <= 5, ext.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
            return isAudio ? "audio" : "video"
        }
        return ext
    }

    /// A client's file name reduced to a label: its last path component, no control
    /// characters, no leading dots, at most 200 characters.
    static func label(_ name: String?) -> String {
        var label = (name ?? "").replacingOccurrences(of: "\\", with: "/")
        label = String(label.split(separator: "/").last ?? "")
        label = String(label.unicodeScalars.filter { $0.value >= 32 && $0.value != 127 }.map(Character.init))
        while label.hasPrefix(".") { label.removeFirst() }
        label = label.trimmingCharacters(in: .whitespaces)
        return label.isEmpty ? "upload" : String(label.prefix(200))
    }
}

/// An upload streamed to disk and hashed on the way.
struct ReceivedUpload: Sendable {
    var path: String
    var key: ContentHash
    var size: Int64
}
