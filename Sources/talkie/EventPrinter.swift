import Foundation
import TalkieCore

/// Shows a run's events: a live progress bar on a terminal, plain lines otherwise, or JSON
/// lines for scripts. Its lock lets the event task and the signal task share it.
final class EventPrinter: @unchecked Sendable {
    private let lock = NSLock()
    enum Mode { case terminal, plain, json }

    private let mode: Mode
    private let outputs: String?
    private let store: String?
    private var total = 0
    private var finished = 0
    private var current: (name: String, progress: RenderProgress)?
    private var itemStarted = Date()
    private var renderSeconds: [Double] = []
    private var toRender = 0
    private var statusLineShown = false

    /// `outputs`: the batch's output folder, when one is known (a cluster worker serves
    /// whatever batch the cluster has). `store`: the cluster's database as shown to people,
    /// in cluster mode.
    init(mode: Mode, outputs: String?, store: String? = nil) {
        self.mode = mode
        self.outputs = outputs
        self.store = store
    }

    func print(_ timed: TimedEvent) {
        lock.withLock { show(timed) }
    }

    func note(_ message: String) { lock.withLock { line(message) } }

    /// Reports why the run could not start or go on: on stderr, and in JSON mode also as a
    /// last `batch_failed` event, so a script reading events learns it without parsing stderr.
    func error(_ message: String, code: String) {
        lock.withLock {
            clearStatusLine()
            if mode == .json {
                let fields: [String: JSONValue] = ["code": .string(code), "message": .string(message)]
                write(BatchEvent.jsonLine(event: "batch_failed", fields: fields, at: Date()) + "\n")
            }
            FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        }
    }

    func finish() { lock.withLock { clearStatusLine() } }

    private func show(_ timed: TimedEvent) {
        let event = timed.event
        if mode == .json {
            write(timed.jsonLine + "\n")
            return
        }
        switch event {
        case .batchStarted(let total, let toRender, let settings):
            self.total = total
            self.toRender = toRender
            finished = total - toRender
            line("batch: \(total) items, \(toRender) to render, \(total - toRender) already done (\(settings))")
        case .itemQueued:
            break
        case .itemStarted(_, let name, let attempt, let device):
            current = (name, RenderProgress(frame: 0, frames: 0))
            itemStarted = Date()
            if mode == .plain {
                line("rendering \(name)\(attempt > 1 ? " (attempt \(attempt))" : "")\(device.map { " on \($0)" } ?? "")")
            }
        case .itemProgress(_, let progress):
            if let name = current?.name { current = (name, progress) }
        case .itemSucceeded(_, let name, let output, let seconds, let score):
            finished += 1
            renderSeconds.append(seconds)
            current = nil
            let scoreText = score.map { String(format: ", lip-sync %.2f", $0) } ?? ""
            line("done  \(name) -> \(outputs.map { "\($0)/" } ?? "")\(output) (\(String(format: "%.1f", seconds)) s\(scoreText))")
        case .itemFailed(_, let name, let error, let willRetry):
            if !willRetry { finished += 1 }
            current = nil
            line("\(willRetry ? "retry" : "FAIL ") \(name): \(error.message)\(willRetry ? " (will retry)" : "")")
        case .itemStopped(_, let name):
            current = nil
            line("stopped \(name); it returns to the queue")
        case .warning(let message):
            line("note: \(message)")
        case .batchFinished(let summary):
            current = nil
            var text = "finished: \(summary.succeeded)/\(summary.total) done, \(summary.failed) failed, \(summary.pending) pending; rendered \(summary.renderedThisRun) this run."
            if summary.interrupted { text += " Interrupted: run the same command again to continue." }
            let out = outputs ?? "OUT"
            if let store {
                // The state is in the database, not in a task_status.json.
                if summary.failed > 0 { text += " See `talkie status --store \(store)`; retry with `talkie retry --store \(store) --out \(out) --failed`." }
                text += " Back up the database, or export the batch: `talkie store export --store \(store) --out FOLDER`."
            } else {
                if summary.failed > 0 { text += " See `talkie status --out \(out)`; retry with `talkie retry --out \(out) --failed`." }
                text += " Keep a backup of \(out)/task_status.json."
            }
            line(text)
        }
        if mode == .terminal { drawStatusLine() }
    }

    private func line(_ text: String) {
        clearStatusLine()
        // In JSON mode stdout carries only events; notes go to stderr.
        if mode == .json { return FileHandle.standardError.write(Data((text + "\n").utf8)) }
        write(text + "\n")
    }

    private func drawStatusLine() {
        guard let current else { return clearStatusLine() }
        let width = 24
        let itemFraction = current.progress.fraction
        let overall = total > 0 ? (Double(finished) + itemFraction) / Double(total) : 0
        let filled = Int(overall * Double(width))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        var text = "[\(finished)/\(total)] \(bar) \(Int(overall * 100))%  \(current.name)"
        let progress = current.progress
        if progress.unit == .frames, progress.frames > 0 { text += " frame \(progress.frame)/\(progress.frames)" }
        if let stage = progress.stage { text += " (\(stage))" }
        if let eta = eta(itemFraction: itemFraction) { text += "  ETA \(eta)" }
        write("\r\u{1B}[K" + text)
        statusLineShown = true
    }

    private func eta(itemFraction: Double) -> String? {
        let elapsed = Date().timeIntervalSince(itemStarted)
        let perItem: Double
        if !renderSeconds.isEmpty {
            perItem = renderSeconds.reduce(0, +) / Double(renderSeconds.count)
        } else if itemFraction > 0.05 {
            perItem = elapsed / itemFraction
        } else {
            return nil
        }
        let remainingItems = Double(max(0, total - finished - 1))
        let seconds = Int(max(0, perItem * remainingItems + max(0, perItem - elapsed)))
        return seconds >= 3600 ? "\(seconds / 3600)h\(seconds % 3600 / 60)m" : "\(seconds / 60)m\(String(format: "%02d", seconds % 60))s"
    }

    private func clearStatusLine() {
        if statusLineShown { write("\r\u{1B}[K") }
        statusLineShown = false
    }

    private func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
