//! Writing a recording's files: stalls.json always, and each rendering the `--format` list
//! asks for, by the module that owns it. The one place `record`, `ci` and `report` write their
//! outputs from.

use std::{fs, io, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    config::{Formats, View},
    model::{
        FLAMEGRAPH_SVG, JUNIT_XML, OFFCPU_FOLDED, OFFCPU_SVG, PROFILE_PB_GZ, REPORT_HTML,
        Recording, STALLS_FOLDED, STALLS_JSON, SUMMARY_MD, TRACE_JSON,
    },
    outputs::{
        folded::{flamegraph_svg, folded_text, offcpu_folded, stall_folded},
        html, junit, pprof,
        summary::summary_markdown,
        trace,
    },
};

/// Writes stalls.json and the renderings `formats` asks for into `dir`, stacks shown in `view`;
/// returns their paths.
pub fn write_outputs(
    dir: &Path,
    recording: &Recording,
    formats: &Formats,
    view: View,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let write = |name: &str, bytes: &[u8]| -> Result<String> {
        let path = dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.display().to_string())
    };
    // Streamed to the file, not built in memory first: a long busy recording's stalls.json
    // is hundreds of MB, and the buffer for it was the agent's peak (issue #16: 268 MB after
    // 4 minutes of loaded FastAPI, heaptrack).
    written.push(write_json(&dir.join(STALLS_JSON), recording, true)?);
    let stalls = stall_folded(recording, view);
    let offcpu = offcpu_folded(recording);
    if formats.folded {
        written.push(write(STALLS_FOLDED, folded_text(&stalls).as_bytes())?);
        written.push(write(OFFCPU_FOLDED, folded_text(&offcpu).as_bytes())?);
    }
    if formats.svg {
        written.push(write(
            FLAMEGRAPH_SVG,
            &flamegraph_svg(&stalls, "stallscope: where stall time went")?,
        )?);
        written.push(write(
            OFFCPU_SVG,
            &flamegraph_svg(&offcpu, "stallscope: off-CPU time of followed threads")?,
        )?);
    }
    if formats.pprof {
        written.push(write(PROFILE_PB_GZ, &pprof::profile_pb_gz(recording)?)?);
    }
    if formats.trace {
        written.push(write_json(
            &dir.join(TRACE_JSON),
            &trace::trace_json(recording),
            false,
        )?);
    }
    if formats.summary {
        written.push(write(
            SUMMARY_MD,
            summary_markdown(recording, view).as_bytes(),
        )?);
    }
    if formats.junit {
        let xml = junit::junit_xml(
            &recording.verdict,
            "stallscope",
            recording.recorded_ns as f64 / 1e9,
        );
        written.push(write(JUNIT_XML, xml.as_bytes())?);
    }
    if formats.html {
        written.push(write(
            REPORT_HTML,
            html::report_html(recording, view)?.as_bytes(),
        )?);
    }
    Ok(written)
}

/// `store::write_json`, returning the path as shown to the user.
fn write_json(path: &Path, value: &impl serde::Serialize, pretty: bool) -> Result<String> {
    crate::store::write_json(path, value, pretty)?;
    Ok(path.display().to_string())
}

/// Makes sure `dir` can take the outputs, with the error every command gives when it cannot.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    ensure_writable_dir(dir).with_context(|| {
        format!(
            "output directory {} is not writable; choose another with --out",
            dir.display()
        )
    })
}

/// Whether `dir` can take our files: created if missing, probed with a temporary file that is
/// removed again (it is ours).
pub fn ensure_writable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(".stallscope-write-test");
    fs::write(&probe, b"")?;
    fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        FrameKind,
        fixtures::{frame, recording},
    };

    /// Issue #18: the view was a process-wide flag; now the renderers are handed it. The same
    /// Python stall written Python-first hides the interpreter's call machinery, and with
    /// `--native` shows it; stalls.json has every frame either way.
    #[test]
    fn the_view_given_is_the_view_written() {
        let mut rec = recording();
        rec.stalls[0].stacks[0].frames = vec![
            frame("_PyEval_EvalFrameDefault", FrameKind::Native),
            frame("handler", FrameKind::Python),
            frame("main", FrameKind::Native),
        ];
        let dir = std::env::temp_dir().join(format!("stallscope-render-{}", std::process::id()));
        let formats = Formats {
            folded: true,
            ..Formats::NONE
        };
        let mut written = Vec::new();
        for view in [View::PythonFirst, View::Native] {
            fs::create_dir_all(&dir).expect("temp dir");
            write_outputs(&dir, &rec, &formats, view).expect("written");
            let folded = fs::read_to_string(dir.join(STALLS_FOLDED)).expect("stalls.folded");
            let json = fs::read_to_string(dir.join(STALLS_JSON)).expect("stalls.json");
            assert!(
                json.contains("_PyEval_EvalFrameDefault"),
                "every frame saved"
            );
            written.push(folded);
            let _ = fs::remove_dir_all(&dir);
        }
        assert!(written[0].contains("handler"), "{}", written[0]);
        assert!(
            !written[0].contains("_PyEval_EvalFrameDefault"),
            "{}",
            written[0]
        );
        assert!(
            written[1].contains("_PyEval_EvalFrameDefault") && written[1].contains("main"),
            "{}",
            written[1]
        );
    }
}
