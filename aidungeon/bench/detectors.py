"""The coherence bench's own detectors: what a player would call a glitch in one shown turn.

They are written apart from the game's guard and cleanup on purpose. The guard ranks and cuts
with its own rules; if the bench scored with those same rules it could only find what the guard
had already removed. So nothing here imports `core.guard` or `core.cleanup`: each detector reads
one shown turn (`Shown`: the action, the text, the recent results, the player's name) and says
yes or no. Which of them the bench may trust is decided by the gold set (`benchmarks/gold/`,
labelled by a person reading each turn): `evaluate` scores every detector against those labels,
and only the ones at precision >= 0.8 and recall >= 0.7, over at least 5 labelled glitches, are
`validated` and count in the headline, the clean-turn rate (`VALIDATED`). The rules were tuned
on the gold set's development half only; the verdict is on its held-out half.

The detectors (their names are the gold set's label keys):

- `first_person`: the narrator says "I", "we", "my", "our", ... outside quoted speech;
- `plays_player`: the model writes the player's speech or moves ("You say", "you told her",
  `"Hi," you said`, "Bob asks ...", "you fired an arrow" when the action was not to shoot);
- `ignored_action`: the result shares no content word (lemma or synonym) with the action;
- `identity_drift`: "You are <another name>", "your name is <another name>";
- `fragment`: a sentence or line without an ending anywhere in the turn, one that is only
  a subordinate clause ("To find out what would be most fitting."), or a noun phrase standing
  alone ("The White Lion.");
- `repetition`: two sentences of the turn say nearly the same words, or a 4-word phrase repeats;
- `player_marker`: a `>` line (the model typing the next action);
- `junk`: web-page, markup or chat-template debris;
- `loop`: the turn is nearly the same as a recent result;
- `repeat_recent`: a sentence copied from a recent result;
- `empty`: nothing was shown (the turn stalled).

What it does not do: cut or repair text, rank candidates, or any I/O besides reading a gold file.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A detector counts in the bench only at this precision and recall against the gold labels.
MIN_PRECISION = 0.8
MIN_RECALL = 0.7
# ...and only when the labels hold at least this many glitches of its kind: a recall of 1.0 over
# one example says nothing.
MIN_SUPPORT = 5
# The detectors that passed the gold set (benchmarks/gold/gold.jsonl): the clean-turn rate counts
# only these. tests/bench/test_coherence_gold.py derives the list from the labels again and fails
# when it differs, so a change to a detector or to the labels cannot move it silently.
VALIDATED: tuple[str, ...] = ("first_person",)


@dataclass(frozen=True)
class Shown:
    """One turn as the player saw it."""

    action: str  # as it entered the story ("You look around."); "" for a continuation
    text: str  # the result shown; "" when the turn stalled
    recent: tuple[str, ...] = ()  # the results before it, oldest first
    player_name: str = ""


# -- words, sentences, quotes --------------------------------------------------------------------

_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]*")
# Straight or curly double quotes; an unclosed quote runs to the end of its paragraph.
_QUOTE_RE = re.compile(r'"[^"\n]*(?:"|$)|“[^”\n]*(?:”|$)', re.MULTILINE)
_SENTENCE_RE = re.compile(r'[^.!?…\n]+(?:[.!?…]+["”’\')]*|$)', re.MULTILINE)
_ENDS_RE = re.compile(r'[.!?…]["”’\')\]]*$|[.!?…,]["”’]$')


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _past_to_base(pairs: str) -> dict[str, str]:
    """ "base:past base:past ..." as {past: base}."""
    return {past: base for base, past in (pair.split(":") for pair in pairs.split())}


def _words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD_RE.findall(text)]


def _unquoted(text: str) -> str:
    """`text` with quoted speech blanked out (same length, so offsets still match)."""
    return _QUOTE_RE.sub(lambda m: " " * len(m.group(0)), text)


def _sentences(text: str) -> list[str]:
    """Sentences, split at terminal punctuation outside quotes and at line breaks."""
    masked = _unquoted(text)
    out = []
    for match in _SENTENCE_RE.finditer(masked):
        piece = text[match.start() : match.end()].strip()
        if piece:
            out.append(piece)
    return out


# -- first person --------------------------------------------------------------------------------

# "I" only as a capital word (I, I'm, I'd); the others in any case. "us" only in lower case
# (so "US" the country is not one).
# "mine" only where it cannot be the noun ("a mine", "the mine").
_FIRST_PERSON_RE = re.compile(
    r"\bI\b|\bI['’](?:m|d|ll|ve)\b|\b(?i:we|my|our|ours|me|myself|ourselves)\b|\bus\b"
    r"|(?<!\b[Aa] )(?<!\b[Tt]he )\b(?i:mine)\b"
)


def first_person(turn: Shown) -> bool:
    """The narrator speaks as "I" or "we" outside quoted speech."""
    return _FIRST_PERSON_RE.search(_unquoted(turn.text)) is not None


# -- the model playing the player -----------------------------------------------------------------

_SPEECH = (
    r"say|says|said|ask|asks|asked|tell|tells|told|reply|replies|replied|answer|answers|answered"
    r"|shout|shouts|shouted|yell|yells|yelled|whisper|whispers|whispered|exclaim|exclaims|exclaimed"
    r"|mutter|mutters|muttered|respond|responds|responded|call|calls|called out|explain|explains|explained"
    r"|scream|screams|screamed|insist|insists|insisted|agree|agrees|agreed|promise|promises|promised"
    r"|mention|mentions|mentioned"
)
_SPEECH_WORDS = frozenset(_SPEECH.replace(" out", "").split("|"))
# Deliberate acts, each form -> its base: "you grabbed a cup" is a move the player did not
# choose unless the action was one (perceiving, standing, feeling are narration, so not here).
_ACTS = {
    form: forms.split()[0]
    for forms in (
        "grab grabs grabbed",
        "take takes took",
        "turn turns turned",
        "walk walks walked",
        "run runs ran",
        "leave leaves left",
        "cross crosses crossed",
        "throw throws threw",
        "pick picks picked",
        "open opens opened",
        "close closes closed",
        "go goes went",
        "try tries tried",
        "decide decides decided",
        "kiss kisses kissed",
        "hug hugs hugged",
        "give gives gave",
        "put puts",
        "draw draws drew",
        "attack attacks attacked",
        "climb climbs climbed",
        "jump jumps jumped",
        "begin begins began",
        "start starts started",
        "pull pulls pulled",
        "push pushes pushed",
        "hand hands handed",
        "kick kicks kicked",
        "hit hits",
        "enter enters entered",
        "sit sits sat",
        "collect collects collected",
        "carry carries carried",
        "dance dances danced",
        "eat eats ate",
        "drink drinks drank",
    )
    for form in forms.split()
}
# Past tenses that are deliberate acts too when the model tells them ("you fired", "you slammed",
# "you made a hole"): any regular past is one unless it perceives, feels, knows or is a state.
_IRREGULAR_ACTS = _past_to_base(
    "make:made bring:brought build:built buy:bought catch:caught fight:fought fly:flew hide:hid "
    "hold:held lead:led lie:lay ride:rode send:sent set:set shoot:shot sing:sang speak:spoke "
    "stand:stood steal:stole strike:struck swim:swam swing:swung tear:tore write:wrote wear:wore "
    "break:broke bite:bit blow:blew dig:dug drive:drove fall:fell feed:fed beat:beat"
)
# Regular pasts that tell what you perceive, feel, know, want or are: narration, not a move.
_NOT_ACTS = _word_set(
    "seemed appeared looked noticed realized realised recognized recognised remembered wondered wanted "
    "needed loved liked hated hoped wished imagined expected believed learned learnt watched listened "
    "smelled sensed tasted glanced stared used owned lived belonged existed deserved missed failed "
    "decided happened died aged tired scared interested surprised amazed confused excited worried "
    "supposed guessed figured considered noted spotted observed heard "
    # outcomes that befall you rather than choices: arriving, surviving, stumbling on something
    "reached arrived survived stumbled ended returned managed"
)
# A past act inside a subordinate clause is background ("As you passed the rail, ...", "how
# you survived"), not a move made for the player.
_BACKGROUND_RE = re.compile(r"\b(?:as|how|when|while|since|because|that|after|once|where|what|until)\s*$", re.I)
_YOU_VERB_RE = re.compile(
    r"\b[Yy]ou\s+(?:(?:also|then|just|quickly|softly|quietly|calmly|simply|suddenly|slowly)\s+)?([a-z]+)\b"
)
# "Can you explain?", "Why did you say that?", "you need to go", "before you leave": addressed
# to the player, or something they might do, not something written for them.
_ADDRESSED_RE = re.compile(
    r"\b(?:can|could|will|would|do|did|does|should|may|might|must|to|why|let|if|when|shall|want|need"
    r"|before|after|until|unless|once)\s*$",
    re.I,
)
# Speech attributed to you: `"...," you said`.
_QUOTE_YOU_RE = re.compile(rf'["”]\s*,?\s*you\s+(?:{_SPEECH})\b', re.IGNORECASE)


def _spoken(text: str) -> list[str]:
    return [m.group(0).strip('"“”') for m in _QUOTE_RE.finditer(text)]


def _echoes(sentence: str, action: str) -> bool:
    """The sentence tells back the player's own words (quoted or not)."""
    said = content_lemmas(" ".join(_spoken(action)))
    if not said:
        return False
    told = content_lemmas(sentence)
    return len(said & told) * 2 >= len(said)


def _is_act_past(verb: str) -> bool:
    """A past tense of a deliberate act: irregular ones by list, regular ones by "-ed" unless
    the verb perceives, feels or states."""
    regular = verb.endswith("ed") and len(verb) > 4 and verb not in _NOT_ACTS
    return verb in _IRREGULAR_ACTS or regular


def _written_for_player(sentence: str, action: str) -> bool:
    """A "you <speech or act>" clause in the sentence that the player did not type."""
    wanted = {lemma for word in content_lemmas(action) for lemma in _family(word)}
    for match in _YOU_VERB_RE.finditer(_unquoted(sentence)):
        if _ADDRESSED_RE.search(sentence[: match.start()]):
            continue
        verb = match.group(1)
        if verb in _SPEECH_WORDS and not _echoes(sentence, action):
            return True
        if verb in _ACTS and not _family(_lemma(_ACTS[verb])) & wanted:
            return True
        background = _BACKGROUND_RE.search(sentence[: match.start()])
        if _is_act_past(verb) and not background and not _family(_lemma(_IRREGULAR_ACTS.get(verb, verb))) & wanted:
            return True
    return bool(_QUOTE_YOU_RE.search(sentence)) and not _echoes(sentence, action)


def plays_player(turn: Shown) -> bool:
    """The result gives the player words or deliberate moves the player did not type.

    Telling back what the player said or did ("You ask, 'Is anyone here?'" after typing it) is
    not playing them, and neither is a question to them ("Can you explain?").
    """
    name = re.escape(turn.player_name.strip())
    by_name = re.compile(rf"\b{name}\s+(?:{_SPEECH})\b|\b{name}\s*:|[\"”]\s*,?\s*{name}\s+(?:{_SPEECH})\b")
    for sentence in _sentences(turn.text):
        if _written_for_player(sentence, turn.action):
            return True
        if name and by_name.search(sentence) and not _echoes(sentence, turn.action):
            return True
    return False


# -- ignored action ------------------------------------------------------------------------------

_STOPWORDS = _word_set(
    "a an the you your yours yourself i me my we our us it its to of in on at by for with from up down "
    "into onto out over under about and or but so then this that these those there here is are was were "
    "be been am do does did have has had will would can could should may might some any all one just "
    "not no say says said ask asks they them he she his her him who what where when how why"
)
# Small synonym families: an action answered in other words ("look" -> "you see") still counts.
_SYNONYMS: tuple[frozenset[str], ...] = tuple(
    _word_set(group)
    for group in (
        "look see gaze glance notice spot observe survey scan around view watch peer examine inspect study",
        "walk step move go head stride advance forward proceed approach come follow",
        "draw weapon sword blade dagger gun pistol knife cutlass rifle axe unsheathe",
        "anyone someone somebody anybody voice reply answer respond silence nobody",
        "search look find rummage examine inspect check",
        "open door unlock swing creak",
        "listen hear sound noise silence quiet ear",
        "follow track trail chase pursue sound",
        "key lock",
        "take grab pick seize hold pocket",
        "run flee sprint dash race escape",
        "hide cover crouch duck conceal",
        "wait pause moment still time",
        "harm hurt peace friend mean",
        "supplies pack bag gear inventory food water ammo",
        "climb ascend scale clamber up",
        "fire flame light spark burn warmth kindle",
        "eat bread food chew bite taste hungry swallow",
        "read note letter paper word write written page",
        "back return retrace came way",
        "attack strike hit fight swing lunge charge",
        "defend block shield parry protect",
        "exit out escape way path passage",
        "call help shout cry yell",
        "sit think ponder consider rest",
        "strange object thing item device equipment artifact",
        "bag pack put stow",
        "light glow bright shine lamp lantern",
        "knock door rap",
        "enter inside step in",
        "moon sky night",
        "name called",
        "dance table",
        "coin gold money pay give reward",
        "sing song music sea",
        "direction town road way map village city",
        "dog pet animal",
        "steal lantern take",
        "rock window throw glass shatter",
        "afraid fear scared brave",
        "happened happen event",
    )
)
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _lemma(word: str) -> str:
    """A crude stem: common suffixes off, a doubled final consonant undone ("stepped" -> "step"),
    a final "e" off ("dance" and "dancing" -> "danc")."""
    word = word.lower().strip("'")
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) >= 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _family(lemma: str) -> set[str]:
    related = {lemma}
    for group in _SYNONYMS:
        lemmas = {_lemma(w) for w in group}
        if lemma in lemmas:
            related |= lemmas
    return related


def content_lemmas(text: str) -> set[str]:
    return {_lemma(w) for w in _words(text) if w not in _STOPWORDS and len(w) > 2}


# Actions any next event answers: whatever the result describes is what you see, or what
# happens while you wait.
_OPEN_ACTIONS = frozenset({"look", "around", "wait"})
# Someone answering: quoted speech, a speech word, or a character talking in the first person.
_REPLY_RE = re.compile(rf'["“]|\b(?:{_SPEECH}|speak|speaks|spoke|words?|voice|silence)\b|\bI\b|\b(?:we|my|me)\b', re.I)


def ignored_action(turn: Shown) -> bool:
    """The result does not answer the action.

    Defence: a result that answers "open the door" almost always names the door, the opening or
    a word for it; one that names none of them is about something else. So the result must share
    a content word with the action (by crude lemma, or a synonym's: "look" finds "see",
    "survey", ...). Two kinds of action are answered otherwise: "look around" and "wait" by
    whatever happens next, and speech by any reply. A continuation (no action) ignores nothing.
    """
    wanted = content_lemmas(turn.action)
    if not turn.action or not wanted or wanted <= _OPEN_ACTIONS:
        return False
    if _spoken(turn.action) and _REPLY_RE.search(turn.text):
        return False
    got = content_lemmas(turn.text)
    return not any(_family(lemma) & got for lemma in wanted)


# -- identity drift ------------------------------------------------------------------------------

_NOT_NAMES = _word_set(
    "A An The Now Still Not Here There In On At Alone Safe Free Ready Sure Able Back Home Inside Outside "
    "Tired Hungry Lost Stuck Captain Sir Lady Lord Dr Mr Mrs Ms"
)
# A title is not the name: "You are Captain Vor'Thraxys" names Vor'Thraxys.
_YOU_ARE_RE = re.compile(
    r"\b(?:[Yy]ou\s+are|[Yy]ou['’]re|[Yy]our\s+name\s+is|[Cc]all\s+you)\s+"
    r"(?:(?:Captain|Lord|Lady|Sir|Dame|Master|Doctor|Dr|Mr|Mrs|Ms|Miss)\.?\s+)?([A-Z][a-z]+)\b"
)


def identity_drift(turn: Shown) -> bool:
    """The player is named as someone else ("You are Zorbithrax", "your name is Tam")."""
    name = turn.player_name.strip().lower()
    for match in _YOU_ARE_RE.finditer(_unquoted(turn.text)):
        word = match.group(1)
        if word not in _NOT_NAMES and word.lower() != name and name:
            return True
    return False


# -- fragments -----------------------------------------------------------------------------------

# A sentence that is only a subordinate or infinitive clause reads as a piece of one.
_CLAUSE_ONLY_RE = re.compile(r"^(?:Or|To\s+\w+|Because|Which|While|Although|Whether|Unless)\b[^,;:]*[.!?…]$")
# Stage directions, "(smirks)": the model's habit, but not a sentence of the story.
_PARENTHESIS_RE = re.compile(r"\([^)\n]*\)")

# A crude finite-verb test, enough to tell "The White Lion." from "The lion roars.": there is
# no tagger here, only what marks a verb in this model's prose.
_AUXILIARIES = _word_set(
    "is are was were am be been has have had do does did can could will would shall should may might must "
    "isn't aren't wasn't weren't hasn't haven't hadn't don't doesn't didn't can't couldn't won't wouldn't"
)
_SUBJECTS = _word_set("i you he she it we they who")
_BASE_VERBS = _word_set(
    "say tell ask look see hear feel know think want need take make go come get give find keep leave put "
    "stand sit walk run turn open close hold bring begin seem become let help call try move live believe "
    "happen show hope love like wait watch follow stop start play read write speak grow lose fall reach "
    "kill remain sound smell taste mean set learn change lead understand pass spend build stay fight carry "
    "break rise cross hang wonder stare smile laugh nod shake shout whisper cry pull push throw catch draw "
    "climb jump enter eat drink sing dance steal search check examine listen lie lay sleep wake notice "
    "remember forget decide agree answer reply appear belong"
)
_IRREGULAR_PASTS = _word_set(
    "said told asked saw heard felt knew thought took made went came got gave found kept left stood sat ran "
    "began became brought held meant led lost fell rose grew broke drew threw caught spoke wrote ate drank "
    "sang stole slept woke hung understood"
)
# Words after which an "-s" word is a noun ("of the dogs"), not a verb ("the dog barks").
_NOUN_CONTEXT = _word_set(
    "of in on at by for with from to into onto over under about and or but a an the your his her their "
    "its this that these those my our very so too as like"
)
# "That" and "those" are left out: they open sentences as pronouns ("That shows ...").
_HEAD_WORDS = _word_set("a an the your his her their its this these my our")
_RELATIVES = _word_set("that which who whom whose when where while")


def _has_finite_verb(words: Sequence[str]) -> bool:
    """Some word of `words` reads as a finite verb (or an imperative)."""
    for i, word in enumerate(words):
        prev = words[i - 1] if i else ""
        if word in _AUXILIARIES or word in _IRREGULAR_PASTS or re.search(r"'(?:s|re|ve|ll|d|m)$|n't$", word):
            return True
        if word.endswith("ed") and len(word) > 4 and i > 0:
            return True
        if word in _BASE_VERBS and (i == 0 or prev in _SUBJECTS or prev in ("to", "not")):
            return True
        if prev in _SUBJECTS or (word in ("never", "always", "often") and i + 1 < len(words)):
            return True
        if i >= 2 and prev not in _NOUN_CONTEXT and _third_person(word, prev):
            return True
    return False


def _third_person(word: str, prev: str) -> bool:
    """`word` after `prev` reads as a present-tense verb: "shimmers", or "flee" after "ships"."""
    if word.endswith("s") and not word.endswith(("ss", "'s", "us", "is")) and len(word) > 3:
        return True
    plural_subject = prev.endswith("s") and not prev.endswith("ss")
    return plural_subject and word.isalpha() and not word.endswith("s") and word not in _NOUN_CONTEXT


def _verbless(sentence: str) -> bool:
    """A noun phrase standing as a sentence: "The White Lion.", "A lamp that was passed down."

    Only sentences that open like a noun phrase ("a", "the", "your", ...) are judged, and only up
    to a relative clause, whose verb is not the sentence's."""
    words = _words(sentence)
    if len(words) < 2 or words[0] not in _HEAD_WORDS:
        return False
    cut = next((i for i, word in enumerate(words) if word in _RELATIVES and i >= 2), len(words))
    return not _has_finite_verb(words[:cut])


def fragment(turn: Shown) -> bool:
    """A line or sentence that never ends, one that starts in lower case, a bare clause, or a
    noun phrase standing alone as a sentence (quoted speech and stage directions left out)."""
    # A stage direction becomes a trailing-off "…": what follows it may go on in lower case.
    text = _PARENTHESIS_RE.sub(" … ", turn.text).strip()
    if not text:
        return False
    for line in text.split("\n"):
        line = line.strip()
        if line and not _ENDS_RE.search(line):
            return True
    previous = ""
    for sentence in _sentences(text):
        first = sentence.lstrip("\"“'‘( ")
        # A continuation runs on from the story before it ("...draw your sword and" -> "see a
        # fire"), and a trailing-off "..." may go on in lower case: neither starts a sentence.
        runs_on = (not previous and not turn.action) or previous.endswith(("...", "…"))
        if (first[:1].islower() and not runs_on) or _CLAUSE_ONLY_RE.match(sentence):
            return True
        if _verbless(_unquoted(sentence)):
            return True
        previous = sentence
    return False


# -- repetition ----------------------------------------------------------------------------------

_PHRASE = 4
_SAME_SENTENCE = 0.6


def _similar(a: Sequence[str], b: Sequence[str]) -> float:
    return difflib.SequenceMatcher(None, list(a), list(b), autojunk=False).ratio()


def repetition(turn: Shown) -> bool:
    """Within the turn: two sentences of nearly the same words, or a 4-word phrase said twice."""
    sentences = [_words(s) for s in _sentences(turn.text)]
    sentences = [s for s in sentences if len(s) >= 3]
    for i, first in enumerate(sentences):
        for second in sentences[i + 1 :]:
            if _similar(first, second) >= _SAME_SENTENCE:
                return True
    words = _words(_unquoted(turn.text))
    grams = [tuple(words[i : i + _PHRASE]) for i in range(len(words) - _PHRASE + 1)]
    return len(grams) != len(set(grams))


# -- the earlier checks, written afresh -----------------------------------------------------------


def player_marker(turn: Shown) -> bool:
    """A `>` prompt line: the model typing the player's next action."""
    return re.search(r"(?m)^\s*>|[.!?]\s+>", turn.text) is not None


_JUNK_RE = re.compile(
    r"https?://|www\.\w|<\|?/?[A-Za-z_|]+\|?>|```|©|\[/?INST\]|#{1,6}\s|(?m:^\s*(?:Chapter\s+\w+|User:|Assistant:"
    r"|Human:|System:|Posted by|Comments?\b|Tags:|Copyright|A/N\b))"
)


def junk(turn: Shown) -> bool:
    """Web-page, markup or chat-template debris in the story."""
    return _JUNK_RE.search(turn.text) is not None


_LOOP = 0.8


def loop(turn: Shown) -> bool:
    """The turn is nearly a recent result again (word sequences at least 80% alike)."""
    words = _words(turn.text)
    return bool(words) and any(_similar(words, _words(old)) >= _LOOP for old in turn.recent if old.strip())


def repeat_recent(turn: Shown) -> bool:
    """A sentence of five words or more copied from a recent result."""
    told = {" ".join(_words(s)) for old in turn.recent for s in _sentences(old)}
    return any(len(w := _words(s)) >= 5 and " ".join(w) in told for s in _sentences(turn.text))


def empty(turn: Shown) -> bool:
    """Nothing was shown: the turn stalled."""
    return not turn.text.strip()


DETECTORS: dict[str, Callable[[Shown], bool]] = {
    "first_person": first_person,
    "plays_player": plays_player,
    "ignored_action": ignored_action,
    "identity_drift": identity_drift,
    "fragment": fragment,
    "repetition": repetition,
    "player_marker": player_marker,
    "junk": junk,
    "loop": loop,
    "repeat_recent": repeat_recent,
    "empty": empty,
}


def detect(turn: Shown) -> dict[str, bool]:
    """Every detector's verdict on one turn."""
    return {name: check(turn) for name, check in DETECTORS.items()}


# -- the gold set --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """One detector against the labels."""

    true_pos: int
    false_pos: int
    false_neg: int
    labelled: int  # turns with this label set true

    @property
    def precision(self) -> float | None:
        flagged = self.true_pos + self.false_pos
        return self.true_pos / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        return self.true_pos / self.labelled if self.labelled else None

    @property
    def validated(self) -> bool:
        p, r = self.precision, self.recall
        supported = self.labelled >= MIN_SUPPORT
        return supported and p is not None and r is not None and p >= MIN_PRECISION and r >= MIN_RECALL


def read_gold(path: Path) -> list[dict[str, Any]]:
    """The labelled turns of a gold JSONL file (one object a line)."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def as_shown(record: dict[str, Any]) -> Shown:
    return Shown(
        action=record["action"],
        text=record["text"],
        recent=tuple(record.get("recent", ())),
        player_name=record.get("player_name", ""),
    )


def evaluate(records: Iterable[dict[str, Any]]) -> dict[str, Score]:
    """Each detector's precision and recall against the records' `labels` (a label left out or
    null means "not applicable" and is skipped for that detector)."""
    counts = {name: [0, 0, 0, 0] for name in DETECTORS}
    for record in records:
        verdicts = detect(as_shown(record))
        for name, flagged in verdicts.items():
            label = record["labels"].get(name)
            if label is None:
                continue
            tally = counts[name]
            tally[0] += flagged and label
            tally[1] += flagged and not label
            tally[2] += label and not flagged
            tally[3] += bool(label)
    return {name: Score(*tally) for name, tally in counts.items()}


def validated(scores: dict[str, Score]) -> tuple[str, ...]:
    """The detectors that passed the gold set, in DETECTORS order."""
    return tuple(name for name in DETECTORS if scores[name].validated)
