import Foundation
import TalkieCore
import TalkieStore

/// HeyGem face2face tasks (`/easy/submit`, `/easy/query`): each task is a one-item batch in
/// its own folder, queued behind whatever runs (never refused as busy), and queryable for
/// as long as the workspace exists, across restarts.
final class Face2FaceRegistry {
    struct Task: Codable, Equatable {
        var code: String
        var audio: String
        var video: String
        var submittedAt: Date
        var setupError: String?
    }

    /// HeyGem's `data` of a query.
    struct Status: Codable, Equatable, Sendable {
        var code: String
        var status: Int
        var progress: Int
        var result: String
        var msg: String
    }

    let folder: String
    private var tasks: [String: Task] = [:]

    init(folder: String) throws {
        self.folder = folder
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        if let data = FileManager.default.contents(atPath: folder + "/tasks.json") {
            let decoder = JSONDecoder()
            decoder.dateDecodingStrategy = .iso8601
            for task in try decoder.decode([Task].self, from: data) { tasks[task.code] = task }
        }
    }

    func task(_ code: String) -> Task? { tasks[code] }

    /// The task's own output folder, named by a hash of its code (never by the code itself).
    func outputs(_ code: String) -> String {
        "\(folder)/\(FileHasher.xxh3(Data(code.utf8)).short)/outputs"
    }

    /// Records a task; false when the same task was already submitted (idempotent).
    func submit(code: String, audio: String, video: String) throws(StudioError) -> Bool {
        if let existing = tasks[code] {
            guard existing.audio == audio && existing.video == video else {
                throw StudioError(400, "10002", "task code \(code) is already used for other files")
            }
            return false
        }
        tasks[code] = Task(code: code, audio: audio, video: video, submittedAt: Date())
        try save()
        return true
    }

    func recordSetupFailure(_ code: String, message: String) {
        tasks[code]?.setupError = message
        try? save()
    }

    /// The item of a task as its store has it.
    private func item(_ code: String) -> Item? {
        (try? StateStore.read(folder: outputs(code)))?.document.items.first
    }

    func isFinished(_ code: String) -> Bool {
        guard let task = tasks[code] else { return true }
        if task.setupError != nil { return true }
        return item(code)?.state.status == .success
            || (item(code)?.state.status == .failed)
    }

    /// Tasks to queue again after a restart.
    func unfinishedCodes() -> [String] {
        tasks.values.sorted { $0.submittedAt < $1.submittedAt }.map(\.code).filter { !isFinished($0) }
    }

    func status(_ code: String) -> Status? {
        guard let task = tasks[code] else { return nil }
        if let error = task.setupError { return Status(code: code, status: 3, progress: 0, result: "", msg: error) }
        guard let item = item(code) else { return Status(code: code, status: 1, progress: 0, result: "", msg: "queued") }
        switch item.state.status {
        case .success:
            return Status(code: code, status: 2, progress: 100, result: outputs(code) + "/" + (item.state.output ?? ""), msg: "")
        case .failed:
            return Status(code: code, status: 3, progress: 0, result: "", msg: item.state.lastError?.message ?? "failed")
        case .pending, .running:
            return Status(code: code, status: 1, progress: 0, result: "", msg: item.state.status == .running ? "rendering" : "queued")
        }
    }

    private func save() throws(StudioError) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        do { try writeFileDurably(folder + "/tasks.json", try encoder.encode(tasks.values.sorted { $0.submittedAt < $1.submittedAt })) } catch {
            throw StudioError(500, "9999", "cannot record the task: \(error)")
        }
    }
}
