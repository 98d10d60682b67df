//! Fusion: turns what the vision path saw (a `Scene`), what was asked (typed or transcribed) and recent exchanges
//! into the language decoder's prompt under a token budget; answers the questions the scene answers by itself (is
//! there, how many, where, what does it say); checks every word of the decoder's sentence against the scene and the
//! question; and builds the deterministic sentence used when the decoder is off, out of budget or not faithful.

use lookout_models::llm::chat::Message;
use lookout_models::vision::detections::{position, Detection, Horizontal, Vertical};
use lookout_models::vision::Scene;
use serde::Serialize;

use crate::question::{
    find_phrase, group_words, names_of, number_value, plural, words, Kind, Question, FUNCTION_WORDS, POSITION_WORDS,
};

/// Longest typed question accepted; longer ones are refused rather than cut.
pub const MAX_QUESTION_BYTES: usize = 2000;
/// `text` as a typed question: trimmed, not empty and within `MAX_QUESTION_BYTES`; the error names it as `what`.
pub fn checked_question<'t>(text: &'t str, what: &str) -> Result<&'t str, String> {
    let question = text.trim();
    if question.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if question.len() > MAX_QUESTION_BYTES {
        return Err(format!("{what} has {} bytes; the limit is {MAX_QUESTION_BYTES}", question.len()));
    }
    Ok(question)
}

/// Longest spoken question `lookout ask --audio` accepts (the daemon's limit is its `microphone.ring_s`).
pub const MAX_QUESTION_AUDIO: lookout_models::audio::AudioLimit = lookout_models::audio::AudioLimit::seconds(60);

/// What the decoder is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// One sentence about the scene.
    Caption,
    /// An answer to a question about the scene.
    Answer(String),
}

/// One earlier question and its answer, oldest first in a history.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub question: String,
    pub answer: String,
}

/// The facts of a scene in words, and the labels the detector can name at all.
pub struct SceneFacts<'a> {
    pub scene: &'a Scene,
    /// Every label the detector knows (COCO-80); a known label that is not in the scene must not be claimed.
    pub known_labels: &'a [String],
}

/// The messages for the decoder and what had to be left out to fit the budget.
#[derive(Debug, Clone, Serialize)]
pub struct FusedPrompt {
    pub messages: Vec<MessageOut>,
    /// The scene as the decoder is told it.
    pub facts: String,
    /// Earlier exchanges included.
    pub history_used: usize,
    /// Parts dropped to fit the token budget ("history", "text", "objects").
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    pub role: String,
    pub content: String,
}

impl FusedPrompt {
    pub fn chat(&self) -> Vec<Message> {
        self.messages.iter().map(|m| Message::new(&m.role, m.content.clone())).collect()
    }
}

/// How a decoder's sentence relates to the scene.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Grounding {
    /// Detected labels the sentence names.
    pub named: Vec<String>,
    /// Detected labels the sentence leaves out.
    pub missing: Vec<String>,
    /// Known labels the sentence names although the scene lacks them.
    pub invented: Vec<String>,
    /// Labels given a count that differs from the detected one ("3 people" when 8 were seen).
    pub miscounted: Vec<String>,
    /// Words the scene, the question and the text read do not support: a new noun, a name, a number, an opinion.
    pub ungrounded: Vec<String>,
}

impl Grounding {
    /// Faithful: nothing invented, miscounted or ungrounded, and for a caption or a description every detected
    /// label named.
    pub fn faithful(&self, task: &Task) -> bool {
        self.invented.is_empty()
            && self.miscounted.is_empty()
            && self.ungrounded.is_empty()
            && (!task.covers_the_scene() || self.missing.is_empty())
    }
}

impl Task {
    /// Whether an answer must name everything detected: a caption, or a request to describe what is seen.
    pub fn covers_the_scene(&self) -> bool {
        match self {
            Task::Caption => true,
            Task::Answer(question) => Question::parse(question, &[]).kind == Kind::Describe,
        }
    }
}

/// What a sentence about text in the photo may say about it.
const TEXT_WORDS: &[&str] =
    &["sign", "signs", "text", "reads", "read", "says", "say", "written", "writing", "words", "word", "label"];

/// A word without its commonest English endings ("fills", "filled", "filling" → "fill"), so that a sentence may
/// use another form of a word it was given.
fn stem(word: &str) -> &str {
    ["ing", "ed", "es", "s"]
        .iter()
        .find_map(|end| word.strip_suffix(end).filter(|root| root.len() >= 3))
        .unwrap_or(word)
}

/// "a dog", "an apple", "8 people".
fn counted(label: &str, count: usize) -> String {
    match count {
        1 => format!("{} {label}", if label.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }),
        n => format!("{n} {}", plural(label)),
    }
}

/// Where a detection sits in the frame, in thirds: "on the left", "at the top right", "in the middle".
fn place(d: &Detection, width: u32, height: u32) -> &'static str {
    let at = position(d.bbox, width, height);
    match (at.vertical, at.horizontal) {
        (Vertical::Top, Horizontal::Left) => "at the top left",
        (Vertical::Top, Horizontal::Center) => "at the top",
        (Vertical::Top, Horizontal::Right) => "at the top right",
        (Vertical::Middle, Horizontal::Left) => "on the left",
        (Vertical::Middle, Horizontal::Center) => "in the middle",
        (Vertical::Middle, Horizontal::Right) => "on the right",
        (Vertical::Bottom, Horizontal::Left) => "at the bottom left",
        (Vertical::Bottom, Horizontal::Center) => "at the bottom",
        (Vertical::Bottom, Horizontal::Right) => "at the bottom right",
    }
}

impl SceneFacts<'_> {
    /// Object phrases, most numerous first: "8 people", "6 kites", "a dog".
    fn object_phrases(&self) -> Vec<String> {
        let mut counts: Vec<(&String, &usize)> = self.scene.counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        counts.into_iter().map(|(label, count)| counted(label, *count)).collect()
    }

    /// The distinct places of `label`'s detections, in order of first appearance.
    fn places_of(&self, label: &str) -> Vec<&'static str> {
        let mut places = Vec::new();
        for d in self.scene.objects.iter().filter(|d| d.label == label) {
            let place = place(d, self.scene.width, self.scene.height);
            if !places.contains(&place) {
                places.push(place);
            }
        }
        places
    }

    /// Where the detections of a label spread over more than three places are: along the top or bottom, in the
    /// upper or lower half, or all over.
    fn spread_of(&self, label: &str) -> &'static str {
        let rows: Vec<Vertical> = self
            .scene
            .objects
            .iter()
            .filter(|d| d.label == label)
            .map(|d| position(d.bbox, self.scene.width, self.scene.height).vertical)
            .collect();
        let all = |allowed: &[Vertical]| rows.iter().all(|r| allowed.contains(r));
        if all(&[Vertical::Top]) {
            "along the top"
        } else if all(&[Vertical::Bottom]) {
            "along the bottom"
        } else if all(&[Vertical::Top, Vertical::Middle]) {
            "in the upper half"
        } else if all(&[Vertical::Middle, Vertical::Bottom]) {
            "in the lower half"
        } else {
            "all across the photo"
        }
    }

    /// Object phrases with where they are, when that is one or two places: "a dog on the left", "8 people".
    fn placed_object_phrases(&self) -> Vec<String> {
        let mut counts: Vec<(&String, &usize)> = self.scene.counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        counts
            .into_iter()
            .map(|(label, count)| match self.places_of(label)[..] {
                [one] => format!("{} {one}", counted(label, *count)),
                _ => counted(label, *count),
            })
            .collect()
    }

    fn text_phrase(&self) -> Option<String> {
        let lines: Vec<&str> = self.scene.text.iter().map(|t| t.text.trim()).filter(|t| !t.is_empty()).collect();
        (!lines.is_empty()).then(|| format!("a sign that reads \"{}\"", lines.join(" ")))
    }

    /// The scene in words: "8 people and 6 kites", "a cup and a sign that reads \"EXIT\"", or "nothing I recognize".
    fn describe(&self, with_objects: usize, with_text: bool) -> String {
        self.describe_objects(self.object_phrases(), with_objects, with_text)
    }

    /// The scene for the decoder: as [`SceneFacts::describe`], with where each kind of object is when it is in one
    /// place, so the decoder need not guess positions.
    fn describe_placed(&self, with_objects: usize, with_text: bool) -> String {
        self.describe_objects(self.placed_object_phrases(), with_objects, with_text)
    }

    fn describe_objects(&self, objects: Vec<String>, with_objects: usize, with_text: bool) -> String {
        let mut phrases: Vec<String> = objects.into_iter().take(with_objects).collect();
        if with_text {
            phrases.extend(self.text_phrase());
        }
        join_and(&phrases).unwrap_or_else(|| "nothing I recognize".to_string())
    }

    /// The labels a question asks about, among the known ones ("how many people" → person, "any animals" → the
    /// animal labels).
    fn labels_in(&self, text: &str) -> Vec<String> {
        Question::parse(text, self.known_labels).labels().into_iter().map(str::to_string).collect()
    }

    /// Known labels a question names that the scene lacks: said explicitly, so a small model does not guess.
    fn absent_asked(&self, task: &Task) -> Vec<String> {
        match task {
            Task::Caption => Vec::new(),
            Task::Answer(question) => self
                .labels_in(question)
                .into_iter()
                .filter(|label| !self.scene.counts.contains_key(label))
                .map(|label| plural(&label))
                .collect(),
        }
    }

    /// Checks `sentence`, written for `task`, against the scene.
    pub fn grounding(&self, sentence: &str, task: &Task) -> Grounding {
        let words = words(sentence);
        let mut g = Grounding::default();
        for label in self.known_labels {
            let places: Vec<usize> = names_of(label).iter().flat_map(|name| find_phrase(&words, name)).collect();
            match (self.scene.counts.get(label), places.is_empty()) {
                (Some(_), false) => g.named.push(label.clone()),
                (Some(_), true) => g.missing.push(label.clone()),
                (None, false) => {
                    // "no people" / "zero dogs" claim nothing.
                    let denied =
                        places.iter().all(|p| *p > 0 && matches!(words[p - 1].as_str(), "no" | "zero" | "any"));
                    if !denied {
                        g.invented.push(label.clone());
                    }
                }
                (None, true) => {}
            }
            if let Some(count) = self.scene.counts.get(label) {
                let said: Vec<usize> =
                    places.iter().filter_map(|p| p.checked_sub(1).and_then(|q| number_value(&words[q]))).collect();
                if said.iter().any(|n| n != count) {
                    g.miscounted.push(label.clone());
                }
            }
        }
        g.ungrounded = self.ungrounded_words(sentence, task);
        g
    }

    /// The words of `sentence` that nothing supports: not a function word, a position, a name of a detected label
    /// or of a group holding one, a detected count, a word of the text read (quoted text must be quoted exactly),
    /// or a word of the question.
    fn ungrounded_words(&self, sentence: &str, task: &Task) -> Vec<String> {
        let mut grounded: Vec<String> = FUNCTION_WORDS.iter().chain(POSITION_WORDS).map(|w| w.to_string()).collect();
        for label in self.scene.counts.keys() {
            grounded.extend(names_of(label).iter().flat_map(|name| words(name)));
        }
        for (word, labels) in group_words(self.known_labels) {
            if labels.iter().any(|l| self.scene.counts.contains_key(l)) {
                grounded.push(word.to_string());
            }
        }
        let read: String = self.scene.text.iter().map(|t| t.text.as_str()).collect::<Vec<_>>().join(" ");
        if !read.trim().is_empty() {
            grounded.extend(TEXT_WORDS.iter().map(|w| w.to_string()));
            grounded.extend(words(&read));
        }
        if let Task::Answer(question) = task {
            grounded.extend(words(question));
        }
        let counts: Vec<usize> = self.scene.counts.values().copied().chain([self.scene.objects.len()]).collect();
        // Names of known labels, and the counts before them, are judged by the label checks (invented, miscounted).
        let said = words(sentence);
        let mut judged = vec![false; said.len()];
        for label in self.known_labels {
            for name in names_of(label) {
                let span = name.split(' ').count();
                for at in find_phrase(&said, &name) {
                    judged[at.saturating_sub(1)..at + span].iter_mut().for_each(|j| *j = true);
                }
            }
        }
        let stems: Vec<&str> = grounded.iter().map(|w| stem(w)).collect();
        let mut ungrounded: Vec<String> = Vec::new();
        for (word, _) in said.into_iter().zip(judged).filter(|(_, judged)| !judged) {
            let supported =
                stems.contains(&stem(&word)) || number_value(&word).is_some_and(|n| counts.contains(&n) || n == 1);
            if !supported && !ungrounded.contains(&word) {
                ungrounded.push(word);
            }
        }
        // Quoted text must be what was read, not a paraphrase.
        let flat_read = read.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        for quoted in sentence.split('"').skip(1).step_by(2) {
            let quoted = quoted.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            if !quoted.is_empty() && !flat_read.contains(&quoted) {
                ungrounded.push(format!("\"{quoted}\""));
            }
        }
        ungrounded
    }

    /// The answer the scene gives by itself to a question it can answer (is there, how many, where, what is it,
    /// what does it say), with the question's kind; None for the others (describe, anything else), which go to the
    /// decoder.
    pub fn scene_answer(&self, task: &Task) -> Option<(Kind, String)> {
        let Task::Answer(text) = task else { return None };
        let question = Question::parse(text, self.known_labels);
        let answer = match question.kind {
            Kind::Exists => self.exists_answer(&question),
            Kind::Count => self.count_answer(&question),
            Kind::Where if !question.subjects.is_empty() => self.where_answer(&question),
            Kind::ReadText => self.read_answer(),
            Kind::Identify => self.identify_answer(&question),
            _ => return None,
        };
        Some((question.kind, answer))
    }

    /// "Yes, I see a dog.", "No, I see no cats.", "I see a dog, but no cats."
    fn exists_answer(&self, question: &Question) -> String {
        let (mut seen, mut unseen): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for subject in &question.subjects {
            let present: Vec<String> =
                subject.labels.iter().filter_map(|l| self.scene.counts.get(l).map(|n| counted(l, *n))).collect();
            if present.is_empty() {
                unseen.push(subject.plural.clone());
            }
            for phrase in present {
                if !seen.contains(&phrase) {
                    seen.push(phrase);
                }
            }
        }
        match (join_and(&seen), join_or(&unseen)) {
            (Some(seen), None) => format!("Yes, I see {seen}."),
            (Some(seen), Some(unseen)) => format!("I see {seen}, but no {unseen}."),
            (None, Some(unseen)) => format!("No, I see no {unseen}."),
            (None, None) => format!("I see {}.", self.describe(usize::MAX, true)),
        }
    }

    /// "There are 8 people.", "I see no cats.", "There are 3 animals: a dog and 2 horses."
    fn count_answer(&self, question: &Question) -> String {
        if question.subjects.is_empty() {
            return format!("I see {}.", self.describe(usize::MAX, false));
        }
        let sentences: Vec<String> = question
            .subjects
            .iter()
            .map(|subject| {
                let present: Vec<(&String, usize)> =
                    subject.labels.iter().filter_map(|l| self.scene.counts.get(l).map(|n| (l, *n))).collect();
                let total: usize = present.iter().map(|(_, n)| n).sum();
                match (total, &present[..]) {
                    (0, _) => format!("I see no {}.", subject.plural),
                    (1, [(label, _)]) => format!("There is 1 {label}."),
                    (n, [(label, _)]) => format!("There are {n} {}.", plural(label)),
                    (n, several) => {
                        let phrases: Vec<String> = several.iter().map(|(l, n)| counted(l, *n)).collect();
                        format!("There are {n} {}: {}.", subject.plural, join_and(&phrases).unwrap_or_default())
                    }
                }
            })
            .collect();
        sentences.join(" ")
    }

    /// "The dog is on the left.", "The 2 cars are on the left and in the middle.", "I see no cats."
    fn where_answer(&self, question: &Question) -> String {
        let mut sentences: Vec<String> = Vec::new();
        for subject in &question.subjects {
            let present: Vec<(&String, usize)> =
                subject.labels.iter().filter_map(|l| self.scene.counts.get(l).map(|n| (l, *n))).collect();
            if present.is_empty() {
                sentences.push(format!("I see no {}.", subject.plural));
            }
            for (label, count) in present {
                let places = self.places_of(label);
                let place = match places.len() {
                    1..=3 => join_and(&places.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                    _ => self.spread_of(label).to_string(),
                };
                sentences.push(match count {
                    1 => format!("The {label} is {place}."),
                    n => format!("The {n} {} are {place}.", plural(label)),
                });
            }
        }
        sentences.join(" ")
    }

    /// "I see a cat.", "I see a giraffe and a zebra.", "I see no animals."; with nothing named, what is seen.
    fn identify_answer(&self, question: &Question) -> String {
        let mut seen: Vec<String> = Vec::new();
        for label in question.labels() {
            if let Some(n) = self.scene.counts.get(label) {
                seen.push(counted(label, *n));
            }
        }
        match (join_and(&seen), question.subjects.is_empty()) {
            (Some(seen), _) => format!("I see {seen}."),
            (None, false) => format!(
                "I see no {}.",
                join_or(&question.subjects.iter().map(|s| s.plural.clone()).collect::<Vec<_>>()).unwrap_or_default()
            ),
            (None, true) => format!("I see {}.", self.describe(usize::MAX, true)),
        }
    }

    /// The text read, quoted exactly, and whether reading stopped before the end; or that there is none.
    fn read_answer(&self) -> String {
        let lines: Vec<&str> = self.scene.text.iter().map(|t| t.text.trim()).filter(|t| !t.is_empty()).collect();
        match (lines.is_empty(), self.scene.text.is_empty() || !self.scene.text_cut) {
            (true, _) => "I see no text I can read.".to_string(),
            (false, true) => format!("It says \"{}\".", lines.join(" ")),
            (false, false) => {
                format!("It says \"{}\"; there is more, which I stopped reading for time.", lines.join(" "))
            }
        }
    }

    /// For a question of no kind the scene answers, whether `sentence` takes up what it asks: says some word of the
    /// question (in any form) beyond the things it names and the function and position words, such as "doing" in
    /// "what is the dog doing?"; "The dog is on the left." does not. True for every other task.
    pub fn takes_up_the_question(&self, task: &Task, sentence: &str) -> bool {
        let Task::Answer(text) = task else { return true };
        if Question::parse(text, self.known_labels).kind != Kind::Other {
            return true;
        }
        let names: Vec<String> =
            self.known_labels.iter().flat_map(|l| names_of(l)).flat_map(|name| words(&name)).collect();
        let asked: Vec<String> = words(text)
            .into_iter()
            .filter(|w| {
                !FUNCTION_WORDS.contains(&w.as_str()) && !POSITION_WORDS.contains(&w.as_str()) && !names.contains(w)
            })
            .collect();
        let said: Vec<String> = words(sentence);
        asked.is_empty() || asked.iter().any(|a| said.iter().any(|s| stem(s) == stem(a)))
    }

    /// A yes/no question the scene cannot settle: about nothing the detector or the text reader reports ("is the
    /// door open?" when doors are not among the labels and no text mentions one), or about more than whether a
    /// thing is there ("is the dog asleep?"): the decoder would only guess.
    pub fn beyond_perception(&self, task: &Task) -> bool {
        let Task::Answer(question) = task else { return false };
        let asked = words(question);
        let yes_no = asked.first().is_some_and(|w| {
            matches!(
                w.as_str(),
                "is" | "are" | "was" | "were" | "does" | "do" | "did" | "can" | "could" | "has" | "have" | "will"
            )
        });
        let seen_text: Vec<String> =
            self.scene.text.iter().flat_map(|t| words(&t.text)).filter(|w| w.len() > 2).collect();
        let other = Question::parse(question, self.known_labels).kind == Kind::Other;
        yes_no && other && !asked.iter().any(|w| seen_text.contains(w))
    }

    /// The sentence used without the decoder: the scene's own answer to the questions it answers, a caption, what
    /// is seen for a description, else that the question cannot be answered from what is seen.
    pub fn sentence(&self, task: &Task) -> String {
        if let Some((_, answer)) = self.scene_answer(task) {
            return answer;
        }
        if self.beyond_perception(task) {
            return format!("I can't tell from what I can see; I see {}.", self.describe(usize::MAX, true));
        }
        match task {
            Task::Caption => capitalize(&format!("a photo with {}.", self.describe(usize::MAX, true))),
            Task::Answer(q) if Question::parse(q, self.known_labels).kind == Kind::Other => {
                format!("I can't tell from what I can see; I see {}.", self.describe(usize::MAX, true))
            }
            Task::Answer(_) => format!("I see {}.", self.describe(usize::MAX, true)),
        }
    }

    /// The decoder's messages for `task`, keeping the prompt within `budget` tokens as counted by `count_tokens`
    /// (which renders and tokenizes the chat). History goes first, then the text, then the least numerous objects.
    pub fn prompt(
        &self,
        task: &Task,
        history: &[Exchange],
        budget: usize,
        count_tokens: &mut dyn FnMut(&[Message]) -> usize,
    ) -> Option<FusedPrompt> {
        let n_objects = self.scene.counts.len();
        let absent = self.absent_asked(task);
        let mut attempts: Vec<(usize, bool, usize, Vec<String>)> = Vec::new();
        for keep_history in (0..=history.len()).rev() {
            let dropped = if keep_history < history.len() { vec!["history".to_string()] } else { vec![] };
            attempts.push((keep_history, true, n_objects, dropped));
        }
        attempts.push((0, false, n_objects, vec!["history".into(), "text".into()]));
        for keep in (1..n_objects).rev() {
            attempts.push((0, false, keep, vec!["history".into(), "text".into(), "objects".into()]));
        }
        for (keep_history, with_text, with_objects, dropped) in attempts {
            let mut facts = format!("The photo shows {}.", self.describe_placed(with_objects, with_text));
            if !absent.is_empty() {
                facts.push_str(&format!(" There are no {} in it.", join_and(&absent).unwrap_or_default()));
            }
            let request = match task {
                Task::Caption => "Write one sentence about the photo that mentions each of them.".to_string(),
                Task::Answer(question) => question.trim().to_string(),
            };
            let mut messages = Vec::new();
            for exchange in &history[history.len() - keep_history..] {
                messages.push(MessageOut { role: "user".into(), content: exchange.question.clone() });
                messages.push(MessageOut { role: "assistant".into(), content: exchange.answer.clone() });
            }
            messages.push(MessageOut { role: "user".into(), content: format!("{facts} {request}") });
            let fused = FusedPrompt { messages, facts, history_used: keep_history, dropped };
            if count_tokens(&fused.chat()) <= budget {
                return Some(fused);
            }
        }
        None
    }
}

/// Words that open a clause a small model tacks on after stating the facts (", with 9 people on the left",
/// ", which is a classic example of ..."): embellishment the facts never gave it.
const TACKED_ON: [&str; 11] =
    ["with", "which", "where", "each", "specifically", "showcasing", "featuring", "making", "creating", "as", "while"];

/// The decoder's first complete sentence, cut before the first tacked-on clause (a "with ..." phrase anywhere);
/// None when the decoder never finished a sentence (it ran on to its token limit).
pub fn answer_sentence(text: &str) -> Option<String> {
    let sentence = first_sentence(text);
    if !sentence.ends_with(['.', '!', '?']) {
        return None;
    }
    let body = sentence.trim_end_matches(['.', '!', '?']);
    let after_comma = body.match_indices(", ").find(|(at, _)| {
        let next = body[at + 2..].split_whitespace().next().unwrap_or("").to_lowercase();
        TACKED_ON.contains(&next.as_str())
    });
    let cut = [after_comma.map(|(at, _)| at), body.find(" with ")].into_iter().flatten().min();
    Some(match cut {
        Some(at) => format!("{}.", &body[..at]),
        None => sentence,
    })
}

/// The first sentence of a decoder's answer (a small model often runs on), trimmed.
fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len();
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') {
            let next = text[i + c.len_utf8()..].chars().next();
            let prev_digit = text[..i].chars().last().is_some_and(|p| p.is_ascii_digit());
            let next_digit = next.is_some_and(|n| n.is_ascii_digit());
            if next.is_none_or(char::is_whitespace) && !(prev_digit && next_digit) {
                end = i + c.len_utf8();
                break;
            }
        }
    }
    text[..end].trim().to_string()
}

fn join_and(items: &[String]) -> Option<String> {
    match items {
        [] => None,
        [one] => Some(one.clone()),
        [init @ .., last] => Some(format!("{} and {last}", init.join(", "))),
    }
}

fn join_or(items: &[String]) -> Option<String> {
    match items {
        [] => None,
        [one] => Some(one.clone()),
        [init @ .., last] => Some(format!("{} or {last}", init.join(", "))),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_models::vision::detections::Detection;

    fn scene(objects: &[(&str, usize)]) -> Scene {
        let mut detections = Vec::new();
        for (label, n) in objects {
            for i in 0..*n {
                let x = i as f32 * 10.0;
                detections.push(Detection {
                    label_id: 0,
                    label: label.to_string(),
                    score: 0.9,
                    bbox: [x, 0.0, x + 5.0, 5.0],
                    track: None,
                });
            }
        }
        Scene::new(100, 100, detections, Vec::new())
    }

    fn labels() -> Vec<String> {
        ["person", "bicycle", "car", "dog", "kite", "cup", "horse", "cat", "hot dog"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn facts_and_fallback_sentences() {
        let s = scene(&[("person", 8), ("kite", 6), ("dog", 1)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        assert_eq!(facts.describe(usize::MAX, true), "8 people, 6 kites and a dog");
        assert_eq!(facts.sentence(&Task::Caption), "A photo with 8 people, 6 kites and a dog.");
        assert_eq!(facts.sentence(&Task::Answer("How many people are there?".into())), "There are 8 people.");
        assert_eq!(facts.sentence(&Task::Answer("how many cats?".into())), "I see no cats.");
        assert_eq!(facts.sentence(&Task::Answer("What do you see?".into())), "I see 8 people, 6 kites and a dog.");
        let door = Task::Answer("Is the door open?".into());
        assert!(facts.beyond_perception(&door) && !facts.beyond_perception(&Task::Answer("Is there a dog?".into())));
        assert_eq!(facts.sentence(&door), "I can't tell from what I can see; I see 8 people, 6 kites and a dog.");
    }

    #[test]
    fn grounding_flags_invented_missing_and_miscounted_labels() {
        let s = scene(&[("person", 8), ("kite", 6)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let caption = Task::Caption;
        let good = facts.grounding("Eight people and 6 kites are in the photo.", &caption);
        assert!(good.faithful(&caption), "{good:?}");
        assert_eq!(facts.grounding("A person flies a kite.", &caption).miscounted, ["person", "kite"]);
        let bad = facts.grounding("Three men and a dog watch the kites.", &caption);
        assert_eq!(bad.invented, ["dog"]);
        assert_eq!(bad.miscounted, ["person"]);
        assert_eq!(bad.ungrounded, ["watch"]);
        let asked = Task::Answer("what fills the sky? are there cats?".into());
        let partial = facts.grounding("Kites fill the sky, and there are no cats.", &asked);
        assert_eq!(partial.missing, ["person"]);
        assert!(
            partial.invented.is_empty() && partial.ungrounded.is_empty(),
            "denied and asked words are grounded: {partial:?}"
        );
        assert!(!partial.faithful(&caption) && partial.faithful(&asked));
        let describe = Task::Answer("What do you see?".into());
        assert!(!facts.grounding("I see kites.", &describe).faithful(&describe), "a description names everything seen");
    }

    #[test]
    fn words_nothing_supports_are_flagged() {
        let s = scene(&[("person", 8), ("kite", 6)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let caption = Task::Caption;
        let ungrounded = |sentence: &str| facts.grounding(sentence, &caption).ungrounded;
        assert_eq!(ungrounded("Eight people fly 6 kites on the beach."), ["fly", "beach"]);
        assert_eq!(ungrounded("There are 8 people outside the photo."), ["outside"]);
        assert_eq!(
            ungrounded("The photo is a classic example of a duck and cover trope."),
            ["classic", "example", "duck", "cover", "trope"]
        );
        assert_eq!(
            ungrounded("There are 14 things: 8 people and 6 kites."),
            ["things"],
            "the total is a detected count"
        );
        assert_eq!(facts.grounding("There are 9 people.", &caption).miscounted, ["person"]);
        assert_eq!(ungrounded("There are 9 of them."), ["9"]);
        assert_eq!(ungrounded("A sign reads \"EXIT\"."), ["sign", "reads", "exit", "\"exit\""], "no text was read");
        let with_text = Scene::new(
            100,
            100,
            Vec::new(),
            vec![lookout_models::vision::scene::TextLine { text: "EXIT 42".into(), score: 0.9, bbox: [0.0; 4] }],
        );
        let facts = SceneFacts { scene: &with_text, known_labels: &known };
        assert!(facts.grounding("A sign reads \"EXIT 42\".", &caption).ungrounded.is_empty());
        assert_eq!(facts.grounding("A sign reads \"EXIT 24\".", &caption).ungrounded, ["24", "\"exit 24\""]);
    }

    #[test]
    fn the_scene_answers_is_there_how_many_where_and_what_does_it_say() {
        let mut objects = scene(&[("person", 2), ("dog", 1)]).objects;
        objects[2].bbox = [5.0, 80.0, 15.0, 95.0]; // the dog at the bottom left
        let s = Scene::new(100, 100, objects, Vec::new());
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let answer = |q: &str| facts.scene_answer(&Task::Answer(q.into())).map(|(_, a)| a);
        assert_eq!(answer("Is there a dog?").unwrap(), "Yes, I see a dog.");
        assert_eq!(answer("Is anyone there?").unwrap(), "Yes, I see 2 people.");
        assert_eq!(answer("Are there any cats?").unwrap(), "No, I see no cats.");
        assert_eq!(answer("Is there a dog or a cat?").unwrap(), "I see a dog, but no cats.");
        assert_eq!(answer("Any animals?").unwrap(), "Yes, I see a dog.");
        assert_eq!(answer("How many animals are there?").unwrap(), "There is 1 dog.");
        assert_eq!(answer("How many children?").unwrap(), "There are 2 people.");
        assert_eq!(answer("How many vehicles?").unwrap(), "I see no vehicles.");
        assert_eq!(answer("Where is the dog?").unwrap(), "The dog is at the bottom left.");
        assert_eq!(answer("Where is the cat?").unwrap(), "I see no cats.");
        assert_eq!(answer("What does the sign say?").unwrap(), "I see no text I can read.");
        let line =
            |text: &str| lookout_models::vision::scene::TextLine { text: text.into(), score: 0.9, bbox: [0.0; 4] };
        let mut page =
            Scene::new(100, 100, Vec::new(), vec![line("It was the best of times,"), line("it was the worst")]);
        let read = |scene: &Scene| {
            SceneFacts { scene, known_labels: &known }.scene_answer(&Task::Answer("Read it.".into())).unwrap().1
        };
        assert_eq!(read(&page), "It says \"It was the best of times, it was the worst\".");
        page.text_cut = true;
        assert_eq!(
            read(&page),
            "It says \"It was the best of times, it was the worst\"; there is more, which I stopped reading for time."
        );
        assert_eq!(answer("What animal is this?").unwrap(), "I see a dog.");
        assert_eq!(answer("Which vehicles are there?").unwrap(), "No, I see no vehicles.");
        assert_eq!(answer("What vehicles do you see?").unwrap(), "I see no vehicles.");
        assert_eq!(answer("What is this?").unwrap(), "I see 2 people and a dog.");
        assert_eq!(answer("What do you see?"), None, "descriptions go to the decoder");
        let doing = Task::Answer("What is the dog doing?".into());
        assert!(!facts.takes_up_the_question(&doing, "The dog is at the bottom left."));
        assert!(facts.takes_up_the_question(&doing, "The dog is doing nothing I can tell."));
        assert!(facts.takes_up_the_question(&Task::Caption, "A dog."));
        assert_eq!(answer("Is the door open?"), None);
    }

    #[test]
    fn prompt_fits_the_budget_by_dropping_history_then_objects() {
        let s = scene(&[("person", 2), ("dog", 1), ("car", 1)]);
        let known = labels();
        let facts = SceneFacts { scene: &s, known_labels: &known };
        let history = vec![Exchange { question: "Is anyone there?".into(), answer: "Yes, two people.".into() }];
        let mut words_in = |m: &[Message]| m.iter().map(|m| m.content.split_whitespace().count()).sum::<usize>();
        let task = Task::Answer("How many cats are there?".into());
        let full = facts.prompt(&task, &history, 1000, &mut words_in).unwrap();
        assert_eq!(full.history_used, 1);
        assert!(
            full.facts.contains("2 people at the top left, a car at the top left and a dog")
                && full.facts.contains("no cats"),
            "{}",
            full.facts
        );
        let tight = facts.prompt(&task, &history, 30, &mut words_in).unwrap();
        assert_eq!(tight.history_used, 0);
        assert!(tight.dropped.contains(&"objects".to_string()), "{tight:?}");
        assert!(facts.prompt(&task, &history, 3, &mut words_in).is_none());
    }

    #[test]
    fn tacked_on_clauses_are_cut() {
        let cut = |t: &str| answer_sentence(t).unwrap_or_default();
        assert_eq!(
            cut("The photo shows 9 people and 6 kites, with 9 people on the left. More."),
            "The photo shows 9 people and 6 kites."
        );
        assert_eq!(cut("The photo shows a cow, a dog, and a person."), "The photo shows a cow, a dog, and a person.");
        assert_eq!(cut("A cat, which is a classic example of art."), "A cat.");
        assert_eq!(cut("A bird with a human face."), "A bird.");
        assert_eq!(answer_sentence("a horse named Lionel with a horse named"), None);
    }

    #[test]
    fn first_sentence_keeps_decimals() {
        assert_eq!(first_sentence(" There are 8 people. And more"), "There are 8 people.");
        assert_eq!(first_sentence("It costs 3.5 euros! Yes"), "It costs 3.5 euros!");
        assert_eq!(first_sentence("no stop"), "no stop");
    }
}
