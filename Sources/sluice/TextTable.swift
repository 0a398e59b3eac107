// Path: Sources/sluice/TextTable.swift — right-aligned columns for the `show runtime` style reports.

enum TextTable {
    /// One line: the first cell 10 wide, the others 13, right-aligned; an overlong cell gets a space.
    static func row(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            let width = index == 0 ? 10 : 13
            return cell.count >= width ? cell + " " : String(repeating: " ", count: width - cell.count) + cell
        }.joined()
    }
}
