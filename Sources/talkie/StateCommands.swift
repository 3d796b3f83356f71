import ArgumentParser
import Foundation
import TalkieCore
import TalkieStore

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show every item: status, attempts, lip-sync score, where it ran, output or error.",
        discussion: "Reads the state without changing it; safe while a run is going on.")

    @Option(name: .long, help: ArgumentHelp("The output folder.", valueName: "folder"))
    var out: String?

    @Option(name: .long, help: ArgumentHelp("Cluster mode: the PostgreSQL database (instead of --out).", valueName: "url"))
    var store: String?

    @Flag(name: .long, help: "Print the state as JSON.")
    var json = false

    func validate() throws {
        guard (out == nil) != (store == nil) else { throw ValidationError("give --out FOLDER, or --store URL for a cluster") }
    }

    func run() async throws {
        if let store {
            try await clusterCommand(store) { cluster in try await ClusterStatus.show(cluster, json: json) }
            return
        }
        guard let out else { return }
        let folder = URL(fileURLWithPath: out).standardizedFileURL.path
        guard FileManager.default.fileExists(atPath: folder) else {
            FileHandle.standardError.write(Data("error: \(out) does not exist; there is no batch there yet\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
        let state: (document: StateDocument, report: RecoveryReport)
        do { state = try StateStore.read(folder: folder) } catch {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
        let notes = Self.notes(state.report, folder: folder, out: out)
        if json {
            // stdout stays the document; what recovery noticed goes to stderr, so damage
            // never reads as a smaller batch.
            for note in notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .iso8601
            FileHandle.standardOutput.write(try encoder.encode(state.document) + Data("\n".utf8))
            return
        }
        for note in notes { print("note: \(note)") }
        let items = state.document.items
        if items.isEmpty {
            print(state.report.source == .legacy ? "an older tool's state is here; `talkie run` imports it" : "no items in \(out) yet")
            return
        }
        let current = state.document.batch?.settings.fingerprint
        // Items stored as running while no run holds the folder were cut short (a kill or
        // a power cut): the next run takes them again, with the attempt counted.
        let interrupted = !StoreLock.isHeld(folder: folder)
        print(pad("ITEM", 28) + pad("STATUS", 9) + pad("TRIES", 6) + pad("SCORE", 6) + pad("ON", 10) + "OUTPUT / ERROR")
        for item in items {
            var detail = item.state.output ?? ""
            if item.state.status == .success, let fingerprint = item.state.settingsFingerprint, fingerprint != current {
                detail += " (other settings)"
            }
            if item.state.status != .success, let error = item.state.lastError { detail = "\(error.kind.rawValue): \(error.message)" }
            let names = item.names.map { ($0 as NSString).lastPathComponent }
            let name = names.first.map { names.count > 1 ? "\($0) (+\(names.count - 1))" : $0 } ?? item.key.short
            let shown = item.state.status == .running && interrupted ? "stopped" : item.state.status.rawValue
            print(pad(name, 28) + pad(shown, 9) + pad(String(item.state.attempts), 6)
                  + pad(item.score.map { String(format: "%.2f", $0) } ?? "-", 6) + pad(item.device ?? "-", 10) + detail)
        }
        var counts: [ItemStatus: Int] = [:]
        for item in items { counts[item.state.status, default: 0] += 1 }
        print("\(items.count) items: " + ItemStatus.allCases.map { status in
            "\(counts[status] ?? 0) \(status == .running && interrupted ? "stopped (the next run takes them again)" : status.rawValue)"
        }.joined(separator: ", ")
              + "; generation \(state.document.generation)")
    }

    /// What recovery noticed, plus what the next run will do about missing items.
    static func notes(_ report: RecoveryReport, folder: String, out: String) -> [String] {
        var notes = report.notes
        let videos = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).filter { $0.hasSuffix(".mp4") }
        if report.needsRebuild {
            notes.append("items finished before the damage may be missing here; the next `talkie run --out \(out)` recovers them from the metadata of the videos in \(out)")
        } else if report.source == .fresh, !videos.isEmpty {
            notes.append("there is no state file in \(out) but \(videos.count) videos; `talkie run --out \(out) --audio FILE --videos FOLDER` recovers the finished ones from their metadata")
        }
        return notes
    }

    private func pad(_ text: String, _ width: Int) -> String {
        let clipped = text.count > width - 1 ? String(text.prefix(width - 2)) + "…" : text
        return clipped + String(repeating: " ", count: max(1, width - clipped.count))
    }
}

struct Reset: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Clear history: forget every item's state. Output videos stay where they are.",
        discussion: "The previous state is kept as task_status.json.bak. The next run renders everything again.")

    @Option(name: .long, help: ArgumentHelp("The output folder.", valueName: "folder"))
    var out: String?

    @Option(name: .long, help: ArgumentHelp("Cluster mode: the PostgreSQL database (instead of --out); items a worker holds are kept.", valueName: "url"))
    var store: String?

    @Flag(name: .long, help: "Confirm: yes, forget the state.")
    var yes = false

    func validate() throws {
        guard (out == nil) != (store == nil) else { throw ValidationError("give --out FOLDER, or --store URL for a cluster") }
        guard yes else { throw ValidationError("reset forgets which items are done (outputs are kept); add --yes to confirm") }
    }

    func run() async throws {
        if let store {
            try await clusterCommand(store) { cluster in
                let count = try await cluster.reset()
                print("forgot \(count) items; outputs are kept")
            }
            return
        }
        guard let out else { return }
        let folder = URL(fileURLWithPath: out).standardizedFileURL.path
        do {
            let lock = try StoreLock(folder: folder)
            defer { lock.release() }
            let store = try StateStore(folder: folder, writtenBy: "talkie \(Talkie.version)")
            let count = store.count
            try store.reset()
            store.close()
            print("forgot \(count) items; outputs are kept in \(out); the previous state is in \(out)/task_status.json.bak")
        } catch {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
    }
}
