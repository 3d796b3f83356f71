import Foundation
import TalkieCore
import TalkieEngine
import TalkieMedia
import TalkieStore

/// One item's render: media checks, the engine, then the output stamped, verified and made
/// durable under its final name. It changes no state: its caller (the batch runner on one
/// machine, a cluster worker on many) commits the outcome to its own store.
public struct ItemRenderer: Sendable {
    /// How a render ended.
    public enum Outcome: Sendable {
        /// The output is durable in the output folder under `output` (relative).
        case succeeded(output: String, score: Double?)
        /// The attempt failed; the engine worker is still usable.
        case failed(ItemError)
        /// The render was stopped (the calling task was cancelled).
        case stopped
        /// The engine worker died or was killed during the render: the attempt failed with
        /// `error`, and the worker must be started again (`cause` says why it ended).
        case workerLost(ItemError, cause: EngineFailure)
    }

    /// The output folder.
    public var outputs: String
    /// The settings the item is rendered with.
    public var settings: RenderSettings
    /// Ask the engine for a contact sheet beside the output.
    public var contactSheets: Bool
    /// A fixed per-item timeout in seconds; nil to scale with the narration.
    public var itemTimeout: Double?
    /// Names to show (and to name outputs after) for template paths.
    public var displayNames: [String: String]
    /// Where the engine's output is written before it is verified; on the same file system
    /// as `outputs`, so the final rename is atomic.
    public var stagingFolder: String

    /// Creates a renderer for one run's settings.
    public init(outputs: String, settings: RenderSettings, contactSheets: Bool = false, itemTimeout: Double? = nil,
                displayNames: [String: String] = [:], stagingFolder: String? = nil) {
        self.outputs = outputs
        self.settings = settings
        self.contactSheets = contactSheets
        self.itemTimeout = itemTimeout
        self.displayNames = displayNames
        self.stagingFolder = stagingFolder ?? (outputs as NSString).appendingPathComponent(".talkie/tmp")
    }

    /// Renders `item` (already started) on `session`. Fills in `item.media` when it probes the
    /// template. `beforePublish` is asked, once the output is verified, whether it may still
    /// be published (a cluster worker checks it still holds its lease).
    public func render(_ item: inout Item, session: EngineSession, audio: (path: String, duration: Double),
                       progress: @escaping @Sendable (RenderProgress) -> Void,
                       log: @escaping @Sendable (String) -> Void,
                       beforePublish: () async -> Bool = { true }) async -> Outcome {
        let key = item.key
        guard let video = item.names.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            return .failed(ItemError(kind: .input, message: "the template \(item.names.first ?? key.short) is no longer there; put it back or remove it from the batch"))
        }
        if item.media == nil {
            do {
                let summary = try MediaProbe.validateTemplate(try await MediaProbe.probe(video), path: video)
                try await MediaProbe.checkFirstFrame(video)
                item.media = summary
            } catch {
                if Task.isCancelled { return .stopped }
                // ffprobe that could not even start (a busy machine) is not the template's fault.
                let kind: FailureKind = error.code == "media.tool_missing" ? .transient : .input
                return .failed(ItemError(kind: kind, message: error.message))
            }
        }

        // Unique per attempt: a worker orphaned by a killed run can never write over this one's file.
        let engineOutput = (stagingFolder as NSString).appendingPathComponent("\(key.id)-\(UUID().uuidString.prefix(8)).engine.mp4")
        var params = settings.engineParams
        if contactSheets { params["contact_sheet"] = .bool(true) }
        let job = RenderJob(id: "\(key.id)-\(item.state.attempts)", video: video, audio: audio.path, output: engineOutput,
                            itemKey: key, params: params, cacheDirectory: path(".talkie/cache/\(settings.engine)"),
                            duration: audio.duration)
        let outcome: RenderOutcome
        do {
            outcome = try await session.render(job, timeout: timeout(forDuration: audio.duration), progress: progress, log: log)
        } catch {
            if Task.isCancelled { return .stopped }
            return .workerLost(ItemError(kind: .transient, message: error.message), cause: error)
        }
        switch outcome {
        case .stopped:
            return .stopped
        case .failed(let error):
            return .failed(error)
        case .done(_, let score):
            let tags = OutputTags(itemKey: key.id, settingsFingerprint: settings.fingerprint, templateName: name(of: item))
            let outputFile = outputName(for: item)
            let staged = engineOutput.replacingOccurrences(of: ".engine.mp4", with: ".mp4")
            defer { unlink(engineOutput) }
            do {
                try await OutputFinisher.stamp(engineOutput: engineOutput, tags: tags, destination: staged)
                try await OutputFinisher.verify(staged, expectedDuration: audio.duration, tags: tags)
            } catch {
                unlink(staged)
                if Task.isCancelled { return .stopped }
                return .failed(ItemError(kind: .transient, message: "the engine's output was rejected: \(error.message)"))
            }
            guard await beforePublish() else {
                unlink(staged)
                return .stopped
            }
            do { try publish(staged, as: path(outputFile)) } catch {
                unlink(staged)
                if Task.isCancelled { return .stopped }
                // Never a success on an unconfirmed write: this attempt fails and a new render
                // writes a new file. If the disk is really failing, the store's own sync
                // stops the run.
                let reason = switch error {
                case .syncFailed(let file, let code): "the disk did not confirm the output \(file) (\(String(cString: strerror(code))))"
                default: error.message
                }
                return .failed(ItemError(kind: .transient, message: "the output could not be made durable: \(reason)"))
            }
            let sheet = (engineOutput as NSString).deletingPathExtension + ".contact.png"
            if FileManager.default.fileExists(atPath: sheet) {
                rename(sheet, path((outputFile as NSString).deletingPathExtension + ".contact.png"))
            }
            return .succeeded(output: outputFile, score: score)
        }
    }

    /// The timeout of an item whose narration lasts `duration` seconds: two minutes to load,
    /// plus a minute per second of media (a CPU engine at a few frames per second fits).
    public func timeout(forDuration duration: Double) -> Double {
        Self.timeout(forDuration: duration, itemTimeout: itemTimeout)
    }

    /// The timeout rule, for callers without a renderer.
    public static func timeout(forDuration duration: Double, itemTimeout: Double?) -> Double {
        itemTimeout ?? 120 + 60 * duration
    }

    /// What a person calls an item: the name it was uploaded under, else its file name.
    public func name(of item: Item) -> String {
        item.names.first.flatMap { displayNames[$0] } ?? item.displayName
    }

    /// `<template name>.<key>.mp4`: readable, and unique per content so no two items (or
    /// machines) ever write the same file.
    public func outputName(for item: Item) -> String {
        var stem = name(of: item)
        stem = (stem as NSString).deletingPathExtension
        stem = String(stem.map { $0 == "/" || $0.isNewline || $0.asciiValue.map { $0 < 32 } == true ? "_" : $0 }.prefix(80))
        if stem.hasPrefix("-") || stem.hasPrefix(".") || stem.isEmpty { stem = "_" + stem }
        return "\(stem).\(item.key.short).mp4"
    }

    /// Makes the verified output durable under its final name: fsync the file, rename it
    /// into place, fsync the folder. Only then may the success be committed.
    private func publish(_ staged: String, as final: String) throws(StoreError) {
        let fd = open(staged, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open the output", path: staged, errno: errno) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw .syncFailed(path: staged, errno: errno) }
        guard rename(staged, final) == 0 else { throw .io("cannot move the output into place", path: final, errno: errno) }
        let folder = open((final as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else { throw .io("cannot open the output folder", path: final, errno: errno) }
        defer { close(folder) }
        guard fsync(folder) == 0 else { throw .syncFailed(path: final, errno: errno) }
    }

    /// Appends one line to a file (an item's engine log), creating nothing.
    public static func appendLine(_ line: String, to path: String) {
        guard let handle = FileHandle(forWritingAtPath: path) else { return }
        defer { try? handle.close() }
        _ = try? handle.seekToEnd()
        try? handle.write(contentsOf: Data((line + "\n").utf8))
    }

    private func path(_ relative: String) -> String {
        (outputs as NSString).appendingPathComponent(relative)
    }
}
