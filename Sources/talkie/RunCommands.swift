import ArgumentParser
import Foundation
import TalkieCore
import TalkieRunner

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Render every template with the narration; resume where a previous run stopped.",
        discussion: """
        Finished items are never rendered again: identity is the content of the
        files, so a renamed or moved template is recognised. New templates in the
        folder are appended. Ctrl-C (or SIGTERM) stops now: the current item returns
        to pending. SIGUSR1 pauses: the current item finishes, then the run ends.
        Run again to continue. Without --audio/--videos the batch recorded in --out
        is continued.
        """)

    @Option(name: .long, help: ArgumentHelp("The narration (wav, mp3, m4a, ...).", valueName: "file"))
    var audio: String?

    @Option(name: .long, parsing: .upToNextOption,
            help: ArgumentHelp("Template videos: files and/or folders (searched recursively).", valueName: "path"))
    var videos: [String] = []

    @OptionGroup var batch: BatchOptions

    func run() async throws {
        let configuration = batch.configuration(audio: audio, videos: videos, retry: nil)
        if let store = batch.store {
            try await ClusterRunCommand.execute(configuration, options: batch, url: store)
        } else {
            try await BatchCommand.execute(configuration, json: batch.json)
        }
    }
}

struct Retry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Render again what failed, or what was made with other settings, then continue the batch.",
        discussion: """
        Change settings and re-render only what they affect:
          talkie retry --out outputs/ --all-with-other-settings --tempo 1.1
        Successes made with the current settings are never touched.
        """)

    @Flag(name: .long, help: "Failed items go back to the queue with fresh attempts.")
    var failed = false

    @Flag(name: .long, help: "Successes made with settings other than the current ones are rendered again.")
    var allWithOtherSettings = false

    @OptionGroup var batch: BatchOptions

    func validate() throws {
        guard failed != allWithOtherSettings else {
            throw ValidationError("say what to retry: --failed or --all-with-other-settings")
        }
    }

    func run() async throws {
        let request: RetryRequest = failed ? .failed : .otherSettings
        let configuration = batch.configuration(audio: nil, videos: [], retry: request)
        if let store = batch.store {
            try await ClusterRunCommand.execute(configuration, options: batch, url: store)
        } else {
            try await BatchCommand.execute(configuration, json: batch.json)
        }
    }
}

/// Runs a batch with a printer and signal handling, and exits with the documented code.
enum BatchCommand {
    static func execute(_ configuration: RunConfiguration, json: Bool) async throws {
        let runner = BatchRunner(configuration, version: "talkie \(Talkie.version)")
        let printer = EventPrinter(mode: json ? .json : (isatty(STDOUT_FILENO) == 1 ? .terminal : .plain),
                                   outputs: configuration.outputs)
        let signals = SignalWatcher([SIGINT, SIGTERM, SIGUSR1])
        // The printer drains the event stream to its end, also after a stop.
        async let printed: Void = { for await timed in runner.events { printer.print(timed) } }()
        let (stopRequests, stopper) = AsyncStream.makeStream(of: Void.self)
        let result: Result<BatchSummary, any Error> = await withTaskGroup(of: Result<BatchSummary, any Error>?.self) { group in
            group.addTask { await BatchSupervisor.run(runner, stopRequests: stopRequests) }
            group.addTask {
                for await signal in signals.stream {
                    if signal == SIGUSR1 {
                        printer.note("pausing: the current item finishes, then the run ends")
                        await runner.pause()
                    } else {
                        printer.note(signal == SIGINT ? "stopping (Ctrl-C again to quit at once)..." : "stopping...")
                        signals.exitOnNextSignal(ExitStatus.interrupted)
                        stopper.yield()
                    }
                }
                return nil
            }
            var outcome: Result<BatchSummary, any Error>?
            for await next in group where next != nil {
                outcome = next
                group.cancelAll()  // ends the signal watcher
            }
            return outcome ?? .failure(CancellationError())
        }
        await printed
        printer.finish()
        switch result {
        case .success(let summary):
            if summary.interrupted { throw ExitCode(ExitStatus.interrupted) }
            if summary.failed > 0 { throw ExitCode(ExitStatus.someFailed) }
        case .failure(let error as any TalkieError):
            printer.error(error.message, code: error.code)
            throw ExitCode(ExitStatus.badInput)
        case .failure(is CancellationError):
            throw ExitCode(ExitStatus.interrupted)
        case .failure(let error):
            printer.error("\(error)", code: "internal")
            throw ExitCode(ExitStatus.badInput)
        }
    }
}
