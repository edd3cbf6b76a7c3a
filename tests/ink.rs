//! Where an SVG's text really lands, in a real renderer: every `<text>` of the documents is
//! drawn alone on a band of a probe page (same font, size, weight and anchor), the page is
//! rendered (rsvg-convert, headless Chromium), and the ink of each band is the text's extent.
//! Then each text must lie within its box (the `<rect>` of its group that holds its anchor: a
//! state, an arrow's label, a frame) or else the canvas, and no line, polyline or path of another
//! group may cross it unless a backing rectangle drawn after the line hides the line there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A box: left, top, right, bottom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect(pub f64, pub f64, pub f64, pub f64);

impl Rect {
    fn holds(&self, o: &Rect, slack: f64) -> bool {
        o.0 >= self.0 - slack
            && o.1 >= self.1 - slack
            && o.2 <= self.2 + slack
            && o.3 <= self.3 + slack
    }

    fn holds_point(&self, x: f64, y: f64) -> bool {
        x >= self.0 && x <= self.2 && y >= self.1 && y <= self.3
    }
}

fn area(r: &Rect) -> f64 {
    (r.2 - r.0) * (r.3 - r.1)
}

/// One text of a document, as written.
#[derive(Debug, Clone)]
pub struct Text {
    pub file: String,
    pub content: String,
    pub x: f64,
    pub y: f64,
    size: f64,
    weight: String,
    anchor: String,
    /// Turned a quarter to the left (`rotate(-90 …)`): its width runs up the page.
    rotated: bool,
    /// Its box, or the canvas.
    pub container: Rect,
    /// The box is an opaque backing drawn at this document position (lines before it hide).
    backing: Option<usize>,
    /// The group it is in (lines of the same group are its own: an arrow and its label).
    group: usize,
}

/// A straight piece of a line, polyline or path (curves sampled), with its group and position.
#[derive(Debug, Clone)]
struct Stroke {
    a: (f64, f64),
    b: (f64, f64),
    group: usize,
    order: usize,
}

/// Every text and stroke of an SVG document, at its place on the canvas.
pub struct Doc {
    pub texts: Vec<Text>,
    strokes: Vec<Stroke>,
}

fn num(n: roxmltree::Node<'_, '_>, a: &str) -> f64 {
    n.attribute(a).and_then(|v| v.trim_end_matches("px").parse().ok()).unwrap_or(0.0)
}

/// Reads `svg` (named `file` in messages).
pub fn read(file: &str, svg: &str) -> Doc {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut out = Doc { texts: Vec::new(), strokes: Vec::new() };
    for (order, n) in doc.descendants().enumerate() {
        // Nested documents (several machines in one file) sit at their `y`.
        let (dx, dy) = n
            .ancestors()
            .skip(1)
            .filter(|a| a.has_tag_name("svg"))
            .fold((0.0, 0.0), |(x, y), a| (x + num(a, "x"), y + num(a, "y")));
        let canvas = n
            .ancestors()
            .skip(1)
            .find(|a| a.has_tag_name("svg"))
            .map(|a| Rect(dx, dy, dx + num(a, "width"), dy + num(a, "height")));
        let group =
            n.ancestors().skip(1).find(|a| a.has_tag_name("g")).map_or(0, |g| g.id().get_usize());
        if n.has_tag_name("text") {
            let (x, y) = (num(n, "x") + dx, num(n, "y") + dy);
            let g = n.ancestors().skip(1).find(|a| a.has_tag_name("g"));
            // The smallest rectangle of its group that holds its anchor is its box.
            let rect = g.and_then(|g| {
                g.children()
                    .filter(|c| c.has_tag_name("rect"))
                    .filter_map(|c| {
                        let (rx, ry) = (num(c, "x") + dx, num(c, "y") + dy);
                        let r = Rect(rx, ry, rx + num(c, "width"), ry + num(c, "height"));
                        r.holds_point(x, y).then_some((r, c))
                    })
                    .min_by(|a, b| area(&a.0).total_cmp(&area(&b.0)))
            });
            let backing = rect.and_then(|(_, c)| {
                (c.attribute("fill") == Some("white"))
                    .then(|| doc.descendants().position(|d| d == c).unwrap())
            });
            out.texts.push(Text {
                file: file.into(),
                content: n.text().unwrap_or("").into(),
                x,
                y,
                size: n.attribute("font-size").and_then(|v| v.parse().ok()).unwrap_or(16.0),
                weight: n.attribute("font-weight").unwrap_or("normal").into(),
                anchor: n.attribute("text-anchor").unwrap_or("start").into(),
                rotated: n.attribute("transform").is_some_and(|t| t.starts_with("rotate(-90")),
                container: rect.map(|(r, _)| r).or(canvas).expect("a text is in a document"),
                backing,
                group,
            });
        }
        let mut push = |pts: &[(f64, f64)]| {
            for w in pts.windows(2) {
                let (a, b) = ((w[0].0 + dx, w[0].1 + dy), (w[1].0 + dx, w[1].1 + dy));
                out.strokes.push(Stroke { a, b, group, order });
            }
        };
        if n.has_tag_name("line") {
            push(&[(num(n, "x1"), num(n, "y1")), (num(n, "x2"), num(n, "y2"))]);
        } else if n.has_tag_name("polyline") {
            let pts: Vec<(f64, f64)> = n
                .attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|p| p.split_once(','))
                .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
                .collect();
            push(&pts);
        } else if n.has_tag_name("path") && n.ancestors().all(|a| !a.has_tag_name("marker")) {
            push(&path_points(n.attribute("d").unwrap_or("")));
        }
    }
    out
}

/// The points of a path of `M x,y Q cx,cy x,y` and `L x,y` (the only ones the lab writes), the
/// curves sampled.
fn path_points(d: &str) -> Vec<(f64, f64)> {
    let spaced = d.replace(['M', 'Q', 'L'], " $& ").replace("  ", " ");
    let mut tokens = spaced.split_whitespace().peekable();
    let pair = |t: &str| -> (f64, f64) {
        let (x, y) = t.split_once(',').unwrap();
        (x.parse().unwrap(), y.parse().unwrap())
    };
    let mut pts = Vec::new();
    while let Some(cmd) = tokens.next() {
        match cmd {
            "M" | "L" => pts.push(pair(tokens.next().unwrap())),
            "Q" => {
                let (c, e) = (pair(tokens.next().unwrap()), pair(tokens.next().unwrap()));
                let s = *pts.last().unwrap();
                for i in 1..=16 {
                    let t = f64::from(i) / 16.0;
                    let u = 1.0 - t;
                    pts.push((
                        u * u * s.0 + 2.0 * u * t * c.0 + t * t * e.0,
                        u * u * s.1 + 2.0 * u * t * c.1 + t * t * e.1,
                    ));
                }
            }
            _ => {}
        }
    }
    pts
}

const BAND: f64 = 38.0;
const BASELINE: f64 = 28.0;
const X0: f64 = 760.0;
const PROBE_W: f64 = 1520.0;

/// What a text's extent depends on: the same shape is measured once.
fn shape(t: &Text) -> (String, u64, String, String) {
    (t.content.clone(), t.size.to_bits(), t.weight.clone(), t.anchor.clone())
}

/// The probe page: each text alone on its band, anchored at [`X0`], its baseline [`BASELINE`]
/// down.
fn probe(texts: &[Text]) -> String {
    let h = BAND * texts.len() as f64 + BAND;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{PROBE_W}\" height=\"{h}\" viewBox=\"0 0 {PROBE_W} {h}\" font-family=\"sans-serif\">\n<rect width=\"{PROBE_W}\" height=\"{h}\" fill=\"white\"/>\n"
    );
    for (i, t) in texts.iter().enumerate() {
        let esc = t.content.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        s.push_str(&format!(
            "<text x=\"{X0}\" y=\"{}\" font-size=\"{}\" font-weight=\"{}\" text-anchor=\"{}\" fill=\"black\">{esc}</text>\n",
            BAND * i as f64 + BASELINE,
            t.size,
            t.weight,
            t.anchor
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// A renderer that turns an SVG file into a PNG of its size.
pub enum Renderer {
    Rsvg,
    Chromium(PathBuf),
}

impl Renderer {
    pub fn name(&self) -> &'static str {
        match self {
            Renderer::Rsvg => "rsvg-convert",
            Renderer::Chromium(_) => "chromium",
        }
    }

    fn render(&self, svg: &Path, png: &Path, w: f64, h: f64, profile: &Path) {
        let mut cmd = match self {
            Renderer::Rsvg => {
                let mut c = Command::new("rsvg-convert");
                c.arg("-o").arg(png).arg(svg);
                c
            }
            Renderer::Chromium(browser) => {
                let mut c = Command::new(browser);
                c.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
                    .args(["--hide-scrollbars", "--force-device-scale-factor=1"])
                    .args(["--disable-background-networking", "--disable-component-update"])
                    .arg(format!("--user-data-dir={}", profile.display()))
                    .arg(format!("--window-size={},{}", w.ceil(), h.ceil()))
                    .arg(format!("--screenshot={}", png.display()))
                    .arg(format!("file://{}", svg.display()));
                c
            }
        };
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "{} failed on {}", self.name(), svg.display());
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish with {} in 90 s", self.name(), svg.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Each text's ink on the canvas, as `renderer` draws it.
pub fn ink(texts: &[Text], renderer: &Renderer, dir: &Path) -> Vec<Rect> {
    let mut shapes: Vec<&Text> = Vec::new();
    for t in texts {
        if !shapes.iter().any(|s| shape(s) == shape(t)) {
            shapes.push(t);
        }
    }
    let shapes: Vec<Text> = shapes.into_iter().cloned().collect();
    let measured = measure(&shapes, renderer, dir);
    texts
        .iter()
        .map(|t| {
            let (l, r, u, d) = measured[shapes.iter().position(|s| shape(s) == shape(t)).unwrap()];
            if t.rotated {
                // rotate(-90 x y): right of the anchor goes up the page, below it goes right.
                Rect(t.x + u, t.y - r, t.x + d, t.y - l)
            } else {
                Rect(t.x + l, t.y + u, t.x + r, t.y + d)
            }
        })
        .collect()
}

/// Each text's ink relative to its anchor: left, right, up, down (negative up).
fn measure(texts: &[Text], renderer: &Renderer, dir: &Path) -> Vec<(f64, f64, f64, f64)> {
    let svg = dir.join(format!("probe-{}.svg", renderer.name()));
    let png = dir.join(format!("probe-{}.png", renderer.name()));
    let h = BAND * texts.len() as f64 + BAND;
    std::fs::write(&svg, probe(texts)).unwrap();
    renderer.render(&svg, &png, PROBE_W, h, &dir.join("profile"));
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, px) = (info.width as usize, info.color_type.samples());
    let inked = |x: usize, y: usize| {
        let p = &buf[(y * w + x) * px..][..3];
        p.iter().any(|c| *c < 200)
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (top, bottom) = ((BAND * i as f64) as usize, (BAND * (i + 1) as f64) as usize);
            let (mut l, mut r, mut u, mut d) = (usize::MAX, 0, usize::MAX, 0);
            for y in top..bottom.min(info.height as usize) {
                for x in 0..w {
                    if inked(x, y) {
                        (l, r, u, d) = (l.min(x), r.max(x + 1), u.min(y), d.max(y + 1));
                    }
                }
            }
            assert!(l < r, "{}: no ink for {:?} in {}", t.file, t.content, renderer.name());
            let base = BAND * i as f64 + BASELINE;
            (l as f64 - X0, r as f64 - X0, u as f64 - base, d as f64 - base)
        })
        .collect()
}

/// What is wrong with the texts of `doc` as drawn (`ink`, in the same order): a text outside
/// its box, or crossed by a stroke.
pub fn faults(doc: &Doc, ink: &[Rect]) -> Vec<String> {
    let mut out = Vec::new();
    for (t, box_) in doc.texts.iter().zip(ink) {
        if !t.container.holds(box_, 1.0) {
            out.push(format!(
                "{}: {:?} runs out of its box: ink {box_:?}, box {:?}",
                t.file, t.content, t.container
            ));
        }
        let inner = Rect(box_.0 + 1.0, box_.1 + 1.0, box_.2 - 1.0, box_.3 - 1.0);
        for s in &doc.strokes {
            let hidden = t.backing.is_some_and(|b| s.order < b);
            if s.group != t.group && !hidden && crosses(s, &inner) {
                out.push(format!(
                    "{}: {:?} is crossed by a line from {:?} to {:?}",
                    t.file, t.content, s.a, s.b
                ));
                break;
            }
        }
    }
    out
}

/// Whether a straight piece passes through a box (sampled finely: the pieces are short).
fn crosses(s: &Stroke, r: &Rect) -> bool {
    let n = (((s.b.0 - s.a.0).abs() + (s.b.1 - s.a.1).abs()) as usize).clamp(2, 4000);
    (0..=n).any(|i| {
        let t = i as f64 / n as f64;
        r.holds_point(s.a.0 + (s.b.0 - s.a.0) * t, s.a.1 + (s.b.1 - s.a.1) * t)
    })
}
