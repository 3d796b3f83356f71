import ArgumentParser
import Foundation
import TalkieRunner

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make sample inputs and render them: the quickest way to see Talkie work.",
        discussion: """
        Makes template videos from the public-domain astronaut photo in scikit-image
        (slow zoom and pan close-ups, a wide shot, and one with no face, which fails
        as it should) and narration in English and Mandarin with espeak-ng, then
        renders the batch with the built-in engine into WORKSPACE/outputs, a contact
        sheet beside each video. Run it again: nothing renders twice. Try --language
        zh afterwards: the same templates with new audio skip face analysis
        (face-track cache).
        """)

    @Option(name: .long, help: ArgumentHelp("Where the sample inputs and outputs go.", valueName: "folder"))
    var workspace = "demo"

    @Option(name: .long, help: ArgumentHelp("Narration language: en or zh.", valueName: "en|zh"))
    var language = "en"

    @Option(name: .long, help: ArgumentHelp("Engine.", valueName: "name"))
    var engine = "classic"

    @Flag(name: .long, help: "Print one JSON event per line.")
    var json = false

    func validate() throws {
        guard ["en", "zh"].contains(language) else { throw ValidationError("--language must be en or zh") }
    }

    func run() async throws {
        let root = URL(fileURLWithPath: workspace).standardizedFileURL.path
        let inputs = root + "/inputs"
        let templates: String
        do {
            FileHandle.standardOutput.write(Data("making sample media in \(inputs) (once)...\n".utf8))
            templates = try await SampleMedia.make(in: inputs, engines: .installed())
        } catch let error as RunSetupError {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
        let configuration = RunConfiguration(
            outputs: root + "/outputs", audio: "\(inputs)/narration-\(language).wav", videos: [templates],
            settings: .init(engine: engine), contactSheets: true)
        do {
            try await BatchCommand.execute(configuration, json: json)
        } catch let exit as ExitCode where exit.rawValue == ExitStatus.someFailed {
            print("The failed item is expected: one sample template shows no face. Outputs: \(root)/outputs")
            throw exit
        }
        print("Outputs and contact sheets: \(root)/outputs")
    }
}
